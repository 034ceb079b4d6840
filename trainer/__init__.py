"""The compact DiT trainer that streams latent shards (flow matching); see the trainer issue."""

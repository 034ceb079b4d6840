"""The compact DiT: model file with size presets, flow matching, the streaming shard loader, the train loop
with exact resume, the Euler sampler, Ray Train launch and the training recipes."""

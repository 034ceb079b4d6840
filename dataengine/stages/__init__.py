"""Stages: one class per step, each with a strict config and the setup/process_batch/teardown lifecycle."""

from dataengine.records import EncodedClip
from dataengine.stages.base import Config, Stage, check_chain
from dataengine.stages.decode import DecodeConfig, DecodeStage, ViewConfig
from dataengine.stages.encode import EncodeConfig, EncodeStage
from dataengine.stages.probe import ProbeConfig, ProbeStage
from dataengine.stages.split import SplitConfig, SplitStage

__all__ = [
    "Config",
    "DecodeConfig",
    "DecodeStage",
    "EncodeConfig",
    "EncodeStage",
    "EncodedClip",
    "ProbeConfig",
    "ProbeStage",
    "SplitConfig",
    "SplitStage",
    "Stage",
    "ViewConfig",
    "check_chain",
]

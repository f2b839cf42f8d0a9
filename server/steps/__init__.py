"""The server's round mechanisms, one small class each (see :mod:`server.pipeline` for phases).

:mod:`server.app` lists the ones a run uses, in order, from the config.
"""

from server.steps.optimizer import ServerOptimizer
from server.steps.records import PrivacyLedger, RoundRecorder
from server.steps.release import DeviceNoise, MeanOfTrained, PooledNoise, UserLevelNoise
from server.steps.replies import (
    ClipCounts,
    DeviceReports,
    EnoughReplies,
    ItemRowClip,
    ReplyValidation,
    ServerClip,
)
from server.steps.sums import PlaintextSum, SecAggSum

__all__ = [
    "ClipCounts",
    "DeviceNoise",
    "DeviceReports",
    "EnoughReplies",
    "ItemRowClip",
    "MeanOfTrained",
    "PlaintextSum",
    "PooledNoise",
    "PrivacyLedger",
    "ReplyValidation",
    "RoundRecorder",
    "SecAggSum",
    "ServerClip",
    "ServerOptimizer",
    "UserLevelNoise",
]

"""SCTP association state saved and restored through the kernel repair mode."""

from .repair import (
                     Probe,
                     QueuesNotEmpty,
                     RepairError,
                     RepairUnsupported,
                     new_socket,
                     pause,
                     probe,
                     release,
                     restore,
                     resume,
                     save,
                     status,
)
from .state import AssocState, Stream

__all__ = ["AssocState", "Probe", "QueuesNotEmpty", "RepairError", "RepairUnsupported",
           "Stream", "new_socket", "pause", "probe", "release", "restore", "resume", "save",
           "status"]

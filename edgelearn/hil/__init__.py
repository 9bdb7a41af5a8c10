"""Hardware in the loop: the host driver (`SerialBoard`, the Board API over a serial port), lab procedures
(characterise, compare, train) and the board emulator (`edgelearn.hil.emulator`). The link protocol they share is
`firmware_model.protocol`."""

from .lab import CompareResult, HilTrainResult, characterize, compare, resume_characterization, train_on_board
from .serial_board import BoardInfo, BoardReportedError, HilError, SerialBoard, SerialLink, identify

__all__ = ["BoardInfo", "BoardReportedError", "CompareResult", "HilError", "HilTrainResult", "SerialBoard",
           "SerialLink", "characterize", "compare", "identify", "resume_characterization",
           "train_on_board"]

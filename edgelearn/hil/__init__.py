"""Hardware in the loop: the board link protocol, the host driver (`SerialBoard`, the Board API over a serial port)
and lab procedures (characterise, compare, train). The board emulator lives in `firmware_model.board`."""

from .lab import CompareResult, HilTrainResult, characterize, compare, resume_characterization, train_on_board
from .serial_board import BoardInfo, BoardReportedError, HilError, SerialBoard, SerialLink, identify

__all__ = ["BoardInfo", "BoardReportedError", "CompareResult", "HilError", "HilTrainResult", "SerialBoard",
           "SerialLink", "characterize", "compare", "identify", "resume_characterization",
           "train_on_board"]

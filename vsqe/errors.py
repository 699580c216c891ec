"""Typed exceptions of vsqe.

The core raises these and never prints; the front ends (CLI, VapourSynth filter, HM hook) turn
them into one-line messages and exit codes. Every message is one line that names the problem.
"""


class VsqeError(Exception):
    """Base class: a failure the user can act on, reported as one line."""

    exit_code = 2


class InputError(VsqeError):
    """A missing, unreadable, empty or undecodable input file."""


class FormatError(VsqeError):
    """A pixel format, size or container vsqe does not support."""


class OutputError(VsqeError):
    """The output cannot be written (folder missing, not writable, disk full, same as input)."""


class CheckpointError(VsqeError):
    """A checkpoint that is unreadable, untrusted, for another architecture or mis-shaped."""


class ModelError(VsqeError):
    """An unknown model name or a model that cannot take the given input."""


class BackendError(VsqeError):
    """A backend that is unknown or unavailable on this machine (no GPU, no TensorRT, ...)."""


class FramesLostError(VsqeError):
    """Some frames could not be decoded; the output was written from the rest."""

    exit_code = 3


class Interrupted(VsqeError):
    """The run was interrupted (SIGINT/SIGTERM); temporary output was removed."""

    exit_code = 130

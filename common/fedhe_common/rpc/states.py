"""Job, round and upload states on the wire (protobuf enums) <-> their plain names.

The server stores states by name ("RUNNING"); the protocol carries enums
(``JOB_STATE_RUNNING``). These are the only conversions between the two.
"""

from __future__ import annotations

from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb


def job_state(name: str) -> pb.JobState.ValueType:
    """The wire enum of a job state name."""
    return pb.JobState.Value(f"JOB_STATE_{name}")


def round_state(name: str) -> pb.RoundState.ValueType:
    """The wire enum of a round state name."""
    return pb.RoundState.Value(f"ROUND_STATE_{name}")


def upload_state(name: str) -> pb.UploadState.ValueType:
    """The wire enum of an upload state name."""
    return pb.UploadState.Value(f"UPLOAD_STATE_{name}")


def job_state_name(value: int) -> str:
    """"RUNNING" for ``JOB_STATE_RUNNING`` (and "UNSPECIFIED" for unknown values)."""
    return _name(pb.JobState, value, "JOB_STATE_")


def round_state_name(value: int) -> str:
    """"PUBLISHED" for ``ROUND_STATE_PUBLISHED``."""
    return _name(pb.RoundState, value, "ROUND_STATE_")


def upload_state_name(value: int) -> str:
    """"COMMITTED" for ``UPLOAD_STATE_COMMITTED``."""
    return _name(pb.UploadState, value, "UPLOAD_STATE_")


def _name(enum: object, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix)  # type: ignore[attr-defined]
    except ValueError:
        return "UNSPECIFIED"

"""Guards that stop a run before it replaces published results with far fewer of them.

An empty source folder, a share that is not mounted (every file "not found") or a
backend query gone wrong all look like a catalogue whose images disappeared. Publishing
that would replace the client's matches, in the warehouse and the backend, by nothing.
So a run whose usable images would drop too far below the last published run's stops
before publishing, unless the user allows it (`--allow-shrink`, DAG param
`allow_shrink`) or the drop is within `max_shrink` (share of the published images that
may disappear; default 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

from npimage.errors import InputError


class ShrinkRefused(InputError):
    """The run would publish far fewer images than the last published run; nothing published.

    The CLI prints it as one line (npimage.errors) and exits 2; the DAG fails the run
    without retries (a retry would see the same source).
    """


@dataclass(frozen=True)
class Shrink:
    """How a run's usable images compare with the last published run's."""

    published: int  # usable images (signatures) of the last published run; 0 if none
    usable: int  # usable images of this run
    lost: int  # images of the last published run without a signature in this run

    @property
    def share_lost(self) -> float:
        return self.lost / self.published if self.published else 0.0


def check_shrink(shrink: Shrink, *, client_id: str, allow_shrink: bool, max_shrink: float,
                 rejects: int) -> None:
    """Raise ShrinkRefused (one-line message) when the run must not be published."""
    if allow_shrink:
        return
    allow = "--allow-shrink (DAG param allow_shrink) if this is intended"
    if shrink.usable == 0:
        raise ShrinkRefused(
            f"client {client_id!r}: no usable image in the source, empty or unreadable "
            f"({rejects} rejected); nothing published, the last published run stays",
            hint=f"check the source (a share not mounted?), or pass {allow}")
    if shrink.share_lost > max_shrink:
        raise ShrinkRefused(
            f"client {client_id!r}: {shrink.lost} of the {shrink.published} published images "
            f"({shrink.share_lost:.0%}) are missing or unreadable now ({rejects} rejected), "
            f"more than max_shrink {max_shrink:.0%}; nothing published, the last published "
            "run stays",
            hint=f"check the source (a share not mounted?), raise --max-shrink, or pass {allow}")

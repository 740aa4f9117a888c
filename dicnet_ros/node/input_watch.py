"""What the node knows about its camera link: matches, DDS-reported losses, silence, and what to tell the user.

Why a separate, rclpy-free piece: the rules (when is a matched camera "silent", which gaps were transport
losses, which fix to suggest) are the part users act on, so they are unit-tested without DDS; the node only
feeds events in.
"""

from __future__ import annotations

from dicnet_ros.node.middleware import (
    RECEIVE_BUFFER_BYTES,
    active_profile,
    kernel_receive_buffer_limit,
    shipped_profile,
)

#: Publishers first seen this soon after the node's first subscription were already there when it started
#: listening (discovery of a new participant takes a moment); any publisher seen later joined after the node.
JOIN_GRACE_S = 1.0


class InputWatch:
    """Counts DDS-reported lost frames, splits sequence gaps into transport losses and queue replacements,
    and notices a publisher that is matched but delivers nothing for ``silence_s`` seconds.

    Sequence numbers are per publisher (DDS writer) and count from its first frame. The frames missing before the
    first one taken from a publisher that joined after the node was listening were sent to the node and replaced in
    its queue (``dropped_queue``); for a publisher that was already publishing when the node started listening they
    are ``before_first_frame``: frames sent before the node listened, or replaced while it started (the two cannot
    be told apart). Either way every frame a publisher sent is counted somewhere.
    """

    def __init__(self, silence_s: float) -> None:
        self.silence_s = float(silence_s)
        self.publishers = 0  # currently matched publishers
        self.matched_at: float | None = None  # when the number of matched publishers last went up
        self.last_frame: float | None = None
        self._lost_before = 0  # lost counts of replaced subscriptions
        self._lost_now: dict[str, int] = {}  # subscription -> total_count of its message_lost event
        self._lost_in_gaps = 0  # lost frames already matched to sequence gaps
        self.started_at: float | None = None  # monotonic time of the node's first subscription to this camera
        self._joined_late: dict[bytes, bool] = {}  # publisher gid -> joined after the node was listening
        self._last_seq: dict[bytes, int] = {}  # publisher gid -> last sequence number taken

    # ------------------------------------------------------------------------------------------ events
    @property
    def lost(self) -> int:
        """Frames DDS reported lost since start (sent after the match, never delivered)."""
        return self._lost_before + sum(self._lost_now.values())

    def lost_total(self, total: int, subscription: str = "") -> None:
        self._lost_now[subscription] = max(self._lost_now.get(subscription, 0), int(total))

    def subscription_replaced(self) -> None:
        """The subscription is re-created (input_qos auto): its loss counter restarts at 0."""
        self._lost_before += sum(self._lost_now.values())
        self._lost_now = {}
        self.publishers = 0

    def subscribed(self, now: float, gids_in_graph: list[bytes]) -> None:
        """A (new) subscription exists from ``now``; the publishers the graph shows already were there before."""
        if self.started_at is None:
            self.started_at = now
        for gid in gids_in_graph:
            self._joined_late.setdefault(bytes(gid)[:16], False)

    def publishers_present(self, gids: list[bytes], now: float) -> None:
        """The publishers the graph shows now (after a match); new ones are recorded with how they joined."""
        for gid in gids:
            self._joined_late.setdefault(bytes(gid)[:16], self._late(now))

    def _late(self, now: float) -> bool:
        return self.started_at is not None and now - self.started_at > JOIN_GRACE_S

    def matched(self, current: int, now: float) -> None:
        if current > self.publishers:
            self.matched_at = now
        self.publishers = int(current)

    def frame_arrived(self, now: float) -> None:
        self.last_frame = now

    def sequence(self, gid: bytes, seq: int, now: float) -> tuple[int, int] | None:
        """A frame taken from publisher ``gid``: (frames replaced in the queue since the previous one taken, DDS-
        reported losses excluded; frames before this publisher's first taken frame that cannot be attributed), or
        None when this frame was taken already (a mixed-reliability camera has two subscriptions)."""
        key = bytes(gid)[:16]
        last = self._last_seq.get(key)
        if last is not None and seq <= last:
            return None
        self._last_seq[key] = seq
        if last is not None:
            return self.queue_share_of_gap(seq - last - 1), 0
        if self._joined_late.setdefault(key, self._late(now)):
            return self.queue_share_of_gap(seq - 1), 0
        return 0, seq - 1

    def queue_share_of_gap(self, gap: int) -> int:
        """Of ``gap`` frames missing between two received ones, those NOT already counted as lost by DDS
        (i.e. replaced in the subscription queue before the callback took them)."""
        if gap <= 0:
            return 0
        explained = min(gap, max(0, self.lost - self._lost_in_gaps))
        self._lost_in_gaps += explained
        return gap - explained

    # ------------------------------------------------------------------------------------------ reporting
    def silent_publisher_warning(self, now: float, topic: str, reliable: bool, input_qos: str) -> str | None:
        """One line naming cause and fix when a publisher is matched but no frame came for ``silence_s``."""
        if self.silence_s <= 0 or self.publishers <= 0 or self.matched_at is None:
            return None
        since = max(self.matched_at, self.last_frame or self.matched_at)
        silent = now - since
        if silent < self.silence_s:
            return None
        lost = f"; DDS counted {self.lost} frame(s) lost in transport" if self.lost else ""
        head = (f"{self.publishers} publisher(s) matched on {topic}, but no frame arrived for {silent:.0f} s"
                f"{lost}.")
        if reliable:
            return (f"{head} The subscription is reliable, so frames are not lost in transport: check that the camera "
                    f"is publishing (ros2 topic hz {topic}).")
        return f"{head} {self.best_effort_fix(input_qos)}"

    def best_effort_fix(self, input_qos: str) -> str:
        """Cause and fix for large best-effort frames that do not arrive, given this process's DDS settings."""
        cause = ("Likely cause: best-effort frames larger than the DDS shared-memory segment (512 KB by default) go "
                 "over UDP in 64 KB fragments, and one lost fragment loses the frame.")
        profile = active_profile()
        if not profile:
            fix = (f"Fix: run the node with the shipped Fast DDS profile (FASTDDS_DEFAULT_PROFILES_FILE="
                   f"{shipped_profile()}; dicnet node and the launch file set it unless the environment names "
                   "another), or publish the camera reliable")
        elif profile == str(shipped_profile()):
            limit = kernel_receive_buffer_limit()
            small = limit is not None and limit < RECEIVE_BUFFER_BYTES
            fix = ("Fix: publish the camera reliable" + (" (input_qos auto follows it)" if input_qos == "auto" else "")
                   + ", or give the camera and the node one profile with a large shared-memory segment (README, "
                   "'Large images')" + (f"; the kernel also caps this node's UDP buffer at net.core.rmem_max={limit} "
                                        f"bytes: raise it to {RECEIVE_BUFFER_BYTES} or more" if small else ""))
        else:
            fix = (f"Fix: the Fast DDS profile {profile} (from the environment) must let large frames through on both "
                   "sides, or publish the camera reliable")
        return f"{cause} {fix}."

    @staticmethod
    def profile_description() -> str:
        profile = active_profile()
        if not profile:
            return "Fast DDS defaults (no profile)"
        return "shipped large-image profile" if profile == str(shipped_profile()) else f"profile {profile}"

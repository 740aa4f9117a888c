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


class InputWatch:
    """Counts DDS-reported lost frames, splits sequence gaps into transport losses and queue replacements,
    and notices a publisher that is matched but delivers nothing for ``silence_s`` seconds."""

    def __init__(self, silence_s: float) -> None:
        self.silence_s = float(silence_s)
        self.publishers = 0  # currently matched publishers
        self.matched_at: float | None = None  # when the number of matched publishers last went up (monotonic)
        self.matched_wall_ns: int | None = None  # the same moment on the wall clock (DDS source timestamps)
        self.last_frame: float | None = None
        self._lost_before = 0  # lost counts of replaced subscriptions
        self._lost_now: dict[str, int] = {}  # subscription -> total_count of its message_lost event
        self._lost_in_gaps = 0  # lost frames already matched to sequence gaps

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

    def matched(self, current: int, now: float, wall_ns: int | None = None) -> None:
        if current > self.publishers:
            self.matched_at = now
            self.matched_wall_ns = wall_ns
        self.publishers = int(current)

    def frame_arrived(self, now: float) -> None:
        self.last_frame = now

    def queue_share_of_gap(self, gap: int) -> int:
        """Of ``gap`` frames missing between two received ones, those NOT already counted as lost by DDS
        (i.e. replaced in the subscription queue before the callback took them)."""
        if gap <= 0:
            return 0
        explained = min(gap, max(0, self.lost - self._lost_in_gaps))
        self._lost_in_gaps += explained
        return gap - explained

    def missed_before_first(self, first_seq: int, first_ns: int, second_seq: int, second_ns: int) -> int:
        """Frames a publisher sent to us before the first one we took from it (replaced in the queue while the
        node was busy): of the ``first_seq - 1`` earlier frames, those published after the match.

        Sequence numbers count from the publisher's first frame, also frames sent before this node existed, so
        the share sent after the match is estimated from the publisher's own rate (the source timestamps of
        the first two frames taken) and the match time; without timestamps nothing is counted.
        """
        earlier = first_seq - 1
        if earlier <= 0 or self.matched_wall_ns is None or not first_ns or second_ns <= first_ns:
            return 0
        period_ns = (second_ns - first_ns) / max(1, second_seq - first_seq)
        since_match = (first_ns - self.matched_wall_ns) / period_ns
        return int(min(earlier, max(0.0, round(since_match))))

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

"""The node's outputs: score and mask, colour / overlay / semantic images only while someone subscribes."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from dicnet_ros.image_conversion import array_to_image_msg
from dicnet_ros.visualization import colorize_labels, colorize_score, overlay


class PublishingMixin:
    """AnomalyNode's publishing methods; they use what the node sets up: the ``_pub_*`` publishers, the
    parameter values ``_p``, ``_model``, ``_score_range``, ``_palette`` and rclpy's ``get_logger``."""

    def _at_size(self, result: Any, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(score, mask, labels) at ``size`` (H, W): resized only when the model answered at another size
        (fixed-size or network-resolution export); the mask is then re-thresholded so it stays score > threshold."""
        score, mask, labels = result.anomaly_score, result.anomaly_mask, result.semantic_labels
        if score.shape[:2] == tuple(size):
            return score, mask, labels
        dsize = (int(size[1]), int(size[0]))
        score = cv2.resize(score, dsize, interpolation=cv2.INTER_LINEAR)
        mask = score > self._model.threshold
        if labels is not None:
            labels = cv2.resize(np.ascontiguousarray(labels, np.uint8), dsize, interpolation=cv2.INTER_NEAREST)
        return score, mask, labels

    def _publish_msp(self, result: Any, size: tuple[int, int], header: Any) -> None:
        """The baseline map beside the score, when asked for and the model has it."""
        pub = self._pub_msp
        if pub is None or pub.get_subscription_count() == 0:
            return
        msp = result.extras.get("msp")
        if msp is None:
            self.get_logger().warning("publish_msp is set but the model exports no msp_score output", once=True)
            return
        if msp.shape[:2] != tuple(size):
            msp = cv2.resize(msp, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
        pub.publish(array_to_image_msg(np.ascontiguousarray(msp, np.float32), "32FC1", header))

    def _publish(self, score: np.ndarray, mask_bool: np.ndarray, labels: np.ndarray | None, image: np.ndarray,
                 header: Any) -> None:
        """Score and mask always; colour / overlay / semantic colour only for subscribers (they cost time)."""
        # even the score and mask are only copied into messages for subscribers: a 1280x720 score is 3.7 MB.
        # The mask (0.9 MB, what most consumers act on) goes first, so it does not wait for the score's transport.
        if self._pub_mask.get_subscription_count() > 0:
            mask = np.multiply(mask_bool.view(np.uint8), np.uint8(255))
            self._pub_mask.publish(array_to_image_msg(mask, "mono8", header))
        if self._pub_score.get_subscription_count() > 0:
            self._pub_score.publish(array_to_image_msg(score, "32FC1", header))
        p = self._p
        lo, hi = self._score_range
        pub = self._pub_score_color
        heat = None  # the score colour map, computed once for ~/anomaly_score_color and the score overlay
        if pub is not None and p["publish_score_color"] and pub.get_subscription_count() > 0:
            heat = colorize_score(score, lo, hi, p["colormap"])
            pub.publish(array_to_image_msg(heat, "rgb8", header))
        pub = self._pub_overlay
        if pub is not None and p["publish_overlay"] and pub.get_subscription_count() > 0:
            if p["overlay_source"] == "mask":
                blended = overlay(image, mask_bool, p["overlay_alpha"])
            else:
                blended = overlay(image, score, p["overlay_alpha"], (lo, hi), p["colormap"],
                                  heat=heat if heat is not None and heat.shape == image.shape else None)
            pub.publish(array_to_image_msg(blended, "rgb8", header))
        if self._pub_semantic is not None and labels is not None:
            labels = np.ascontiguousarray(labels, dtype=np.uint8)
            self._pub_semantic.publish(array_to_image_msg(labels, "mono8", header))
            pub = self._pub_semantic_color
            if pub is not None and pub.get_subscription_count() > 0:
                pub.publish(array_to_image_msg(colorize_labels(labels, self._palette), "rgb8", header))
        elif self._pub_semantic is not None:
            self.get_logger().warning("publish_semantic is set but the model has no segmentation output",
                                      once=True)

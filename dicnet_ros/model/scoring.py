"""The one scoring function (DiCNet and the classifier baselines), shared by evaluation, export and the node.

DiCNet modes (the paper and the official code disagree; every reported number names its mode):
- ``paper``: Eq. 7, a = 1/C * sum_c (d_c - mu_c)^2 with d = teacher - student and mu_c the per-channel mean of
  d on in-distribution training images (estimated by ``dicnet calibrate``).
- ``code``:  a = 1/C * sum_c d_c^2 (what zhouhuan-hust/DiCNet evaluation_with_seg.py computes).
Per-image min-max (the official code's last step) is an option for the paper protocol only: a vehicle needs
scores that compare across frames, so the default path never uses it.

``smoothing`` (odd k >= 1, default 1 = off, as in the paper) averages the per-pixel score over a k x k window
at feature resolution before upsampling. Single-pixel discrepancies at 1/8 resolution are mostly noise (object
edges, thin poles), while anomalies cover several cells; the averaging is part of the model's scoring, stored
in its config and traced into the exported graph, so every path scores the same way.

Teacher feature normalisations (``TEACHER_NORMS``): ``bn_affine`` = the BatchNorm output with its learned scale
and shift (official code); ``standardized`` = (x - running_mean) / sqrt(running_var + eps) (paper Eq. 2).

Baselines from the same teacher's logits (higher = more anomalous): ``msp`` = 1 - max softmax,
``maxlogit`` = -max logit, ``entropy`` = softmax entropy.

Fusion (``SCORE_FUSIONS``, ``none`` = the paper): ``maxlogit`` adds the teacher's MaxLogit to the discrepancy,
each standardised by its mean and standard deviation on in-distribution pixels (``fusion_norm``, estimated by
``dicnet calibrate``; no anomaly label is used). The two disagree where it matters: the discrepancy is high on
rare known classes the student reproduces badly, MaxLogit on class boundaries and on objects the teacher
confidently calls something; a pixel high in both is rarely normal. ``outlier_maxlogit`` fuses, the same way,
the MaxLogit of an *outlier head* instead of the teacher's classifier: a copy of that classifier (1x1 convolution
on the ReLU of the teacher feature) refitted with the features frozen so that its logits stay low on outlier
proxies (``dicnet fit-outlier-head``, ``training/outlier_head.py``). The teacher, its class ids and the MSP /
MaxLogit baselines are untouched; only the fused term changes. ``score_fusion_weight`` (default 1) weighs the
standardised MaxLogit term against the discrepancy's.

Class-guided averaging (``class_window`` k > 1, default off): each pixel's score is averaged with the mean score of
the pixels around it (k x k at feature resolution) that the teacher puts in the same class, weighted by the
teacher's class probabilities. A large anomaly is often scored high only along its outline, where its interior
looks like a plain known surface; the teacher tends to give the whole object one (wrong) class, so the outline's
score spreads into the interior, while the same-class averaging keeps it from leaking across class boundaries
into the road or sky around it. ``score_class_weight`` (default 0.5) is the share of the same-class mean: a thin
anomaly (a limb, a pole-like object) that the teacher merges into the class around it loses less of its score
at a smaller share. Label-free, a few pooling operations, in the exported graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SCORING_MODES = ("paper", "code")
SCORE_FUSIONS = ("none", "maxlogit", "outlier_maxlogit")
TEACHER_NORMS = ("bn_affine", "standardized")
BASELINES = ("msp", "maxlogit", "entropy")


def anomaly_score(
    teacher_feature: torch.Tensor,
    student_feature: torch.Tensor,
    mode: str = "paper",
    mu_c: torch.Tensor | None = None,
    smoothing: int = 1,
) -> torch.Tensor:
    """Per-pixel DiCNet score (N, 1, h, w) from the two (N, C, h, w) features at feature resolution."""
    if mode not in SCORING_MODES:
        raise ValueError(f"unknown scoring mode {mode!r}; choose one of {SCORING_MODES}")
    if smoothing < 1 or smoothing % 2 == 0:
        raise ValueError(f"score smoothing must be an odd window size >= 1, got {smoothing}")
    d = teacher_feature - student_feature
    if mode == "paper" and mu_c is not None:
        d = d - mu_c.to(d.dtype).view(1, -1, 1, 1)
    score = d.pow(2).mean(dim=1, keepdim=True)
    if smoothing > 1:
        score = F.avg_pool2d(score, smoothing, stride=1, padding=smoothing // 2, count_include_pad=False)
    return score


def fuse_with_maxlogit(discrepancy: torch.Tensor, logits: torch.Tensor, norm: torch.Tensor,
                       weight: float = 1.0) -> torch.Tensor:
    """(discrepancy - m_d) / s_d + weight * (maxlogit - m_l) / s_l at feature resolution; ``norm`` = (m_d, s_d, m_l,
    s_l)."""
    norm = norm.to(discrepancy.dtype)
    maxlogit = baseline_score(logits.to(discrepancy.dtype), "maxlogit")
    return (discrepancy - norm[0]) / norm[1] + weight * (maxlogit - norm[2]) / norm[3]


def class_guided_average(score: torch.Tensor, logits: torch.Tensor, window: int, weight: float = 0.5) -> torch.Tensor:
    """(1 - weight) * score + weight * (same-class k x k mean of the score) at feature resolution; ``window`` 1 or
    ``weight`` 0 = the score unchanged."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"class window must be an odd window size >= 1, got {window}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"class weight must be in [0, 1], got {weight}")
    if window == 1 or weight == 0.0:
        return score
    probs = logits.to(score.dtype).softmax(dim=1)  # (N, K, h, w): soft class membership of every pixel

    def box(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, window, stride=1, padding=window // 2, count_include_pad=False)

    class_mean = box(probs * score) / box(probs).clamp_min(1e-6)  # mean score of class k around each pixel
    return (1.0 - weight) * score + weight * (probs * class_mean).sum(dim=1, keepdim=True)


def discrepancy_channel_sum(teacher_feature: torch.Tensor, student_feature: torch.Tensor) -> torch.Tensor:
    """Sum over batch and pixels of d = teacher - student per channel (C,): what mu_c is averaged from."""
    return (teacher_feature - student_feature).sum(dim=(0, 2, 3))


def minmax_per_image(score: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max each image's map to [0, 1] (the official code's protocol; not for the running vehicle)."""
    flat = score.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *([1] * (score.dim() - 1)))
    hi = flat.max(dim=1).values.view(-1, *([1] * (score.dim() - 1)))
    return (score - lo) / (hi - lo).clamp_min(eps)


def baseline_score(logits: torch.Tensor, method: str) -> torch.Tensor:
    """Classic uncertainty baselines from segmentation logits (N, K, h, w) -> (N, 1, h, w)."""
    if method == "msp":
        # max softmax = exp(l_max - l_max) / sum_k exp(l_k - l_max) = 1 / sum_k exp(l_k - l_max): the same number
        # without normalising every channel (a channel-axis softmax is a quarter of the CPU graph's time)
        shifted = logits - logits.amax(dim=1, keepdim=True)
        return 1.0 - shifted.exp().sum(dim=1, keepdim=True).reciprocal()
    if method == "maxlogit":
        return -logits.amax(dim=1, keepdim=True)
    if method == "entropy":
        logp = logits.log_softmax(dim=1)
        return -(logp.exp() * logp).sum(dim=1, keepdim=True)
    raise ValueError(f"unknown baseline {method!r}; choose one of {BASELINES}")

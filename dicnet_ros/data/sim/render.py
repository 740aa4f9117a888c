"""Render one labelled street image (optionally with anomalies) from a seed.

``render_image`` is a pure function of (seed, size, anomaly models): the scene, camera, lighting,
anomalies and sensor effects all draw from one generator seeded with the image seed. Each process
keeps one pybullet DIRECT connection and calls ``resetSimulation`` per image.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field

import cv2
import numpy as np
import pybullet as p
import pybullet_data

from dicnet_ros.data.sim.classes import SIM_ANOMALY_ID, SIM_PROXY_ID
from dicnet_ros.data.sim.objects import AnomalyModel, group_by_family
from dicnet_ros.data.sim.scene import ROAD_TOP, SKY, SceneBuilder, StreetLayout, build_street

NEAR, FAR = 0.1, 300.0
_CLIENT: int | None = None
_MEASURE_CLIENT: int | None = None
_EXTENT_CACHE: dict[str, float] = {}


@dataclass
class RenderResult:
    """An RGB image, its train-id label map and what went into it."""

    rgb: np.ndarray  # (H, W, 3) uint8
    label: np.ndarray  # (H, W) uint8 train ids (anomaly = SIM_ANOMALY_ID)
    anomalies: list[dict] = field(default_factory=list)  # name, family, size_m, pixels
    anomaly_pixels: int = 0


def get_client() -> int:
    """The process-wide pybullet DIRECT connection (created lazily, one per worker process)."""
    global _CLIENT
    if _CLIENT is None or not p.isConnected(_CLIENT):
        _CLIENT = p.connect(p.DIRECT)
    return _CLIENT


@contextlib.contextmanager
def _quiet_fds():
    """Silence the C-level URDF importer warnings (they go straight to fd 1/2, bypassing Python)."""
    saved = []
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    try:
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(devnull, fd)
            except OSError:
                pass
        yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


def _extent(client: int, body: int) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounds over all links (getAABB(body) alone only covers the base link)."""
    lo, hi = (np.array(v) for v in p.getAABB(body, -1, physicsClientId=client))
    for j in range(p.getNumJoints(body, physicsClientId=client)):
        a, b = p.getAABB(body, j, physicsClientId=client)
        lo, hi = np.minimum(lo, a), np.maximum(hi, b)
    return lo, hi


_MESH_SUFFIXES = (".obj", ".stl")
_URDF_WRAPPER = """<robot name="{name}"><link name="base"><visual><geometry><mesh filename="{mesh}"/></geometry>
<material name="m"><color rgba="0.6 0.6 0.6 1"/></material></visual><collision><geometry><mesh filename="{mesh}"/>
</geometry></collision></link></robot>
"""


def _urdf_file(model: AnomalyModel) -> str:
    """Absolute URDF path of a model; a bare mesh (.obj / .stl under pybullet_data) gets a one-link wrapper URDF
    written once per process into the temp folder."""
    path = os.path.join(pybullet_data.getDataPath(), model.urdf)
    if not path.lower().endswith(_MESH_SUFFIXES):
        return path
    import tempfile

    folder = os.path.join(tempfile.gettempdir(), f"dicnet_sim_urdfs_{os.getpid()}")
    os.makedirs(folder, exist_ok=True)
    wrapper = os.path.join(folder, f"{model.name}.urdf")
    if not os.path.exists(wrapper):
        with open(wrapper, "w", encoding="utf-8") as fh:
            fh.write(_URDF_WRAPPER.format(name=model.name, mesh=path))
    return wrapper


def _native_size(model: AnomalyModel) -> float:
    """Largest extent of a model at scale 1, cached per process.

    Measured in a separate pybullet connection so that a cache miss does not change the body ids (and
    hence nothing at all) in the scene being rendered: output must not depend on what a worker saw before.
    """
    global _MEASURE_CLIENT
    if model.urdf not in _EXTENT_CACHE:
        if _MEASURE_CLIENT is None or not p.isConnected(_MEASURE_CLIENT):
            _MEASURE_CLIENT = p.connect(p.DIRECT)
        client = _MEASURE_CLIENT
        with _quiet_fds():
            b = p.loadURDF(
                _urdf_file(model),
                [0, 0, 0],
                useFixedBase=True,
                physicsClientId=client,
            )
        lo, hi = _extent(client, b)
        p.resetSimulation(physicsClientId=client)
        _EXTENT_CACHE[model.urdf] = float(max(np.max(hi - lo), 1e-3))
    return _EXTENT_CACHE[model.urdf]


@dataclass
class Camera:
    """Pinhole camera sampled near the ego lane; keeps the matrices for pybullet."""

    view: list[float]
    proj: list[float]
    eye: np.ndarray
    forward: np.ndarray


def sample_camera(rng: np.random.Generator, layout: StreetLayout, width: int, height: int) -> Camera:
    """Ego-lane camera: height 1.1-2.3 m, pitch -12..+1 deg, yaw +-8 deg, vertical FOV 38-68 deg."""
    n_right = max(1, layout.n_lanes // 2) if layout.n_lanes > 1 else 1
    lane = int(rng.integers(n_right))
    shoulder = layout.extra.get("shoulder", 0.0)
    lat = -layout.road_w / 2 + shoulder + (lane + 0.5) * layout.lane_w + rng.uniform(-0.4, 0.4)
    x, y, h = layout.path.pose(0.0, lat)
    eye = np.array([x, y, ROAD_TOP + rng.uniform(1.1, 2.3)])
    yaw = h + math.radians(rng.uniform(-8, 8))
    pitch = math.radians(rng.uniform(-12, 1))
    roll = math.radians(rng.uniform(-2, 2))
    fwd = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])
    left = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
    up0 = np.cross(fwd, -left) * -1.0
    up = up0 * math.cos(roll) + left * math.sin(roll)
    view = p.computeViewMatrix(eye.tolist(), (eye + fwd * 10).tolist(), up.tolist())
    proj = p.computeProjectionMatrixFOV(rng.uniform(38, 68), width / height, NEAR, FAR)
    return Camera(view, proj, eye, fwd)


def _sample_light(rng: np.random.Generator) -> dict:
    az, el = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(15, 80))
    warm = rng.uniform(0, 0.25)
    return {
        "lightDirection": [math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)],
        "lightColor": [1.0, 1.0 - warm * 0.4, 1.0 - warm],
        "lightDistance": 100.0,
        "lightAmbientCoeff": rng.uniform(0.35, 0.75),
        "lightDiffuseCoeff": rng.uniform(0.3, 0.75),
        "lightSpecularCoeff": rng.uniform(0.0, 0.25),
        "shadow": int(rng.random() < 0.8),
    }


def _place_anomalies(
    client: int,
    rng: np.random.Generator,
    layout: StreetLayout,
    models: tuple[AnomalyModel, ...],
    n: int,
    near: bool = False,
) -> list[tuple[int, dict]]:
    """Load n anomaly models at random poses/scales on the road or sidewalk ahead of the camera."""
    families = group_by_family(models)
    names = list(families)
    placed = []
    for k in range(n):
        fam = families[names[int(rng.integers(len(names)))]]
        model = fam[int(rng.integers(len(fam)))]
        size = float(np.exp(rng.uniform(math.log(0.4), math.log(3.5))))
        prominent = k == 0 and rng.random() < 0.6  # most images get one clearly visible object
        if near or prominent:
            size = max(size, 0.8)
        s = rng.uniform(5.0, 9.0) if near else float(np.exp(rng.uniform(math.log(4.0), math.log(35.0))))
        if prominent and not near:
            s = rng.uniform(5.0, 16.0)
        on_road = near or rng.random() < 0.7 or max(layout.sidewalk_w) == 0
        if on_road:
            lat, z = rng.uniform(-0.45, 0.45) * layout.road_w, ROAD_TOP
            if near:
                lat = rng.uniform(-0.25, 0.05) * layout.road_w
        else:
            idx = int(rng.integers(2))
            while layout.sidewalk_w[idx] == 0:
                idx = 1 - idx
            side = (-1, 1)[idx]
            lat = side * (layout.road_w / 2 + rng.uniform(0.2, 0.9) * layout.sidewalk_w[idx])
            z = layout.sidewalk_h
        x, y, _ = layout.path.pose(s, lat)
        tumble = not model.upright or rng.random() < 0.2
        rpy = [
            rng.uniform(-math.pi, math.pi) if tumble else 0.0,
            rng.uniform(-math.pi / 2, math.pi / 2) if tumble else 0.0,
            rng.uniform(-math.pi, math.pi),
        ]
        scale = size / _native_size(model)
        with _quiet_fds():
            b = p.loadURDF(
                _urdf_file(model),
                [x, y, 0.0],
                p.getQuaternionFromEuler(rpy),
                useFixedBase=True,
                globalScaling=scale,
                physicsClientId=client,
            )
        lo, _hi = _extent(client, b)
        pos, orn = p.getBasePositionAndOrientation(b, physicsClientId=client)
        p.resetBasePositionAndOrientation(
            b, [pos[0], pos[1], pos[2] + z - lo[2]], orn, physicsClientId=client
        )
        # proxies are always recoloured: the student must not learn "this colour is an outlier"
        if (model.family in ("urdf", "toys") and rng.random() < 0.5) or model.family == "proxy":
            col = [*rng.uniform(0.05, 1.0, 3).tolist(), 1.0]
            for j in range(-1, p.getNumJoints(b, physicsClientId=client)):
                p.changeVisualShape(b, j, rgbaColor=col, physicsClientId=client)
        placed.append(
            (
                b,
                {
                    "name": model.name,
                    "family": model.family,
                    "size_m": round(size, 3),
                    "distance_m": round(s, 2),
                    "on_road": bool(on_road),
                },
            )
        )
    return placed


def _sky(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Procedural sky (zenith->horizon gradient with soft clouds) and the haze colour matching it."""
    overcast = rng.random() < 0.3
    zen = (
        rng.uniform([0.55, 0.6, 0.65], [0.7, 0.72, 0.75])
        if overcast
        else rng.uniform([0.2, 0.4, 0.7], [0.45, 0.6, 0.95])
    )
    hor = np.clip(zen + rng.uniform(0.15, 0.35), 0, 1)
    t = (np.arange(h, dtype=np.float32) / max(h - 1, 1))[:, None, None] ** 0.7
    sky = zen[None, None, :] * (1 - t) + hor[None, None, :] * t
    small = rng.random((max(2, h // 24), max(2, w // 24))).astype(np.float32)
    clouds = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    amount = rng.uniform(0.0, 0.6)
    c = np.clip((clouds - 0.5) * 2.5, 0, 1)[..., None] * amount
    sky = sky * (1 - c) + np.array([0.95, 0.95, 0.97]) * c
    return np.broadcast_to(sky, (h, w, 3)).astype(np.float32), hor.astype(np.float32)


def _sensor(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Exposure/white-balance jitter, blur, Gaussian noise and an optional JPEG round trip (float in, uint8 out)."""
    img = img * rng.uniform(0.75, 1.25) * rng.uniform(0.93, 1.07, 3)[None, None, :]
    img = np.clip(img, 0, 1) ** rng.uniform(0.85, 1.15)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.9))
    img = img * 255.0 + rng.normal(0.0, rng.uniform(0.5, 6.0), img.shape)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(55, 96))])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out


def render_image(
    seed: int, width: int, height: int, anomaly_models: tuple[AnomalyModel, ...] = (), max_tries: int = 6,
    proxy_models: tuple[AnomalyModel, ...] = (),
) -> RenderResult:
    """Render one image; with anomaly models, insert 1-4 anomalies and guarantee at least one is visible.

    ``proxy_models`` (training images only): 1-2 outlier proxies, labelled ``SIM_PROXY_ID`` (no visibility
    guarantee: an occluded proxy is simply absent from the label map).
    """
    client = get_client()
    rng = np.random.default_rng(seed)
    p.resetSimulation(physicsClientId=client)
    builder = SceneBuilder(client, rng)
    layout = build_street(builder)
    cam = sample_camera(rng, layout, width, height)
    light = _sample_light(rng)
    min_px = max(4, round(1e-4 * width * height))

    placed: list[tuple[int, dict]] = []
    for attempt in range(max_tries if anomaly_models else 1):
        if anomaly_models:
            for b, _ in placed:
                p.removeBody(b, physicsClientId=client)
            near = attempt == max_tries - 1
            placed = _place_anomalies(
                client, rng, layout, anomaly_models, 1 if near else int(rng.integers(1, 5)), near=near
            )
        if proxy_models and attempt == 0:
            proxies = _place_anomalies(client, rng, layout, proxy_models, int(rng.integers(1, 3)))
            for b, _ in proxies:
                builder.body_class[b] = SIM_PROXY_ID
        _, _, rgba, depth, seg = p.getCameraImage(
            width, height, cam.view, cam.proj, renderer=p.ER_TINY_RENDERER, physicsClientId=client, **light
        )
        seg = np.asarray(seg, dtype=np.int64).reshape(height, width)
        body = np.where(seg >= 0, seg & ((1 << 24) - 1), -1)
        if not placed:
            break
        anomaly_ids = np.array([b for b, _ in placed])
        is_anom = np.isin(body, anomaly_ids)
        if int(is_anom.sum()) >= min_px:
            break
    else:
        raise RuntimeError(f"could not make an anomaly visible for seed {seed}")

    # labels: body id -> class through a lookup table; background is sky
    n = max([*builder.body_class, *(b for b, _ in placed), 0]) + 2
    lut = np.full(n, SKY, dtype=np.uint8)
    for b, c in builder.body_class.items():
        lut[b] = c
    for b, _ in placed:
        lut[b] = SIM_ANOMALY_ID
    label = np.where(body >= 0, lut[np.clip(body, 0, n - 1)], SKY).astype(np.uint8)

    # image: sky, distance haze, sensor effects
    rgb = np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3].astype(np.float32) / 255.0
    sky, haze = _sky(rng, height, width)
    bg = body < 0
    rgb[bg] = sky[bg]
    d = np.asarray(depth, dtype=np.float32).reshape(height, width)
    dist = FAR * NEAR / (FAR - (FAR - NEAR) * d)
    vis = rng.uniform(120.0, 900.0)
    a = (1.0 - np.exp(-dist / vis))[..., None] * rng.uniform(0.5, 1.0)
    a[bg] = 0.0
    rgb = rgb * (1 - a) + haze[None, None, :] * a
    out = _sensor(rng, rgb.astype(np.float32))

    anomalies = []
    for b, meta in placed:
        meta = dict(meta, pixels=int((body == b).sum()))
        anomalies.append(meta)
    return RenderResult(out, label, anomalies, int((label == SIM_ANOMALY_ID).sum()))

"""Camera paths for SANA-WM (`sana world --camera ...` / `--actions ...`).

`resolve_camera` turns any supported input into one `CameraPath` (numpy only, no torch import);
`sana.camera.conditioning` turns a path and the first frame into the model's camera tensors (torch);
`sana.camera.preview` draws a path, `sana.camera.export` writes it as a `.camera.json`.
"""

from .actions import ACTION_HELP, DEFAULT_SPEED, DEFAULT_TURN_RATE, actions_to_c2w, parse_actions
from .path import FRAME_STRIDE, MAX_WORLD_FRAMES, MODEL_FPS, CameraPath, snap_num_frames
from .resolve import KINDS_HELP, NO_INTRINSICS_HINT, resolve_camera

__all__ = ["ACTION_HELP", "DEFAULT_SPEED", "DEFAULT_TURN_RATE", "FRAME_STRIDE", "KINDS_HELP", "MAX_WORLD_FRAMES", "MODEL_FPS",
           "NO_INTRINSICS_HINT", "CameraPath", "actions_to_c2w", "parse_actions", "resolve_camera",
           "snap_num_frames"]

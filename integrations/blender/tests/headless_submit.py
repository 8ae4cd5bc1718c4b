"""Drives the add-on as a user would, in a headless Blender (tests/blender_addon.rs):

    blender -b SHOT.blend --python-exit-code 1 --python-expr "import runpy; runpy.run_path('headless_submit.py')"

Zips the add-on folder and installs it by the usual route (Preferences > Install, then
enable), points its preferences at the suanli binary, submits the open scene with the Submit
operator, follows the job with Refresh until it ends, fetches the frames with Fetch, and
writes what the panel shows to $SUANLI_ADDON_RESULT as JSON. Any failure raises, which
--python-exit-code turns into a non-zero exit.

Environment: SUANLI_ADDON_DIR (the add-on folder), SUANLI_BIN, SUANLI_ADDON_RESULT, and the
farm's SUANLI_NATS / SUANLI_STORE (passed on to suanli).
"""

import json
import os
import shutil
import tempfile
import time

import addon_utils
import bpy

addon_dir = os.environ["SUANLI_ADDON_DIR"]
work = tempfile.mkdtemp(prefix="suanli-addon-")
zip_path = shutil.make_archive(
    os.path.join(work, "suanli_submit"), "zip", os.path.dirname(addon_dir), os.path.basename(addon_dir)
)
assert bpy.ops.preferences.addon_install(filepath=zip_path, overwrite=True) == {"FINISHED"}
bpy.ops.preferences.addon_enable(module="suanli_submit")
loaded, enabled = addon_utils.check("suanli_submit")
assert loaded and enabled, "the add-on did not enable"
assert hasattr(bpy.types, "SUANLI_PT_panel"), "the panel is not registered"

prefs = bpy.context.preferences.addons["suanli_submit"].preferences
prefs.suanli_path = os.environ["SUANLI_BIN"]
prefs.nats = os.environ["SUANLI_NATS"]

scene = bpy.context.scene
scene.frame_start, scene.frame_end = 1, 2
settings = scene.suanli
settings.chunk = 1
settings.priority = 3
settings.fetch_dir = os.path.join(work, "frames") + os.sep

result = bpy.ops.suanli.submit()
assert result == {"FINISHED"}, f"submit: {result}"
assert settings.job_id, "no job id after submit"

deadline = time.monotonic() + 600
while settings.state not in ("done", "failed", "canceled"):
    assert time.monotonic() < deadline, f"job {settings.job_id} still {settings.state}"
    time.sleep(1)
    assert bpy.ops.suanli.refresh() == {"FINISHED"}

assert bpy.ops.suanli.fetch() == {"FINISHED"}
frames_dir = bpy.path.abspath(settings.fetch_dir)
with open(os.environ["SUANLI_ADDON_RESULT"], "w") as f:
    json.dump(
        {
            "job": settings.job_id,
            "state": settings.state,
            "frames_done": settings.frames_done,
            "frames_total": settings.frames_total,
            "message": settings.message,
            "files": sorted(os.listdir(frames_dir)),
            "saved": not bpy.data.is_dirty,
        },
        f,
    )

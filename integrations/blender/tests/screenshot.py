"""Takes docs/images/blender-addon.png from a real Blender session (not part of the tests):

    suanli up --dir /tmp/farm &          # note its NATS URL and store
    blender -b --factory-startup --python worker/tests/data/make_scene.py -- /tmp/shot010.blend 48
    SUANLI_NATS=nats://… SUANLI_STORE=file:///tmp/farm/store SUANLI_BIN=target/debug/suanli \
      SUANLI_ADDON_DIR=integrations/blender/suanli_submit SUANLI_SHOT_OUT=/tmp/panel.png \
      xvfb-run -a -s "-screen 0 1600x1000x24" blender /tmp/shot010.blend --python integrations/blender/tests/screenshot.py

It installs and enables the add-on, submits the scene from the panel, waits until 16 frames
are done, scrolls the Output properties to the Suanli panel and saves that area.
"""

import os, shutil, tempfile, time
import addon_utils, bpy

addon_dir = os.path.abspath(os.environ["SUANLI_ADDON_DIR"])
work = tempfile.mkdtemp()
zip_path = shutil.make_archive(os.path.join(work, "suanli_submit"), "zip", os.path.dirname(addon_dir), "suanli_submit")
bpy.ops.preferences.addon_install(filepath=zip_path, overwrite=True)
bpy.ops.preferences.addon_enable(module="suanli_submit")
prefs = bpy.context.preferences.addons["suanli_submit"].preferences
prefs.suanli_path = os.path.abspath(os.environ["SUANLI_BIN"])
prefs.nats = os.environ["SUANLI_NATS"]
prefs.store = os.environ["SUANLI_STORE"]
prefs.studio = "acme"
scene = bpy.context.scene
scene.suanli.chunk = 2
scene.suanli.priority = 5
scene.suanli.regions = "guian,ulanqab"
scene.suanli.policy = "balanced"

def setup():
    win = bpy.context.window_manager.windows[0]
    for area in win.screen.areas:
        if area.type == "PROPERTIES":
            area.spaces[0].context = "OUTPUT"
    with bpy.context.temp_override(window=win):
        bpy.ops.suanli.submit()
    return None

start = time.monotonic()
phase = {"scrolled": False}
def props_area(win):
    return next(a for a in win.screen.areas if a.type == "PROPERTIES")
def shoot():
    s = bpy.context.scene.suanli
    if (s.frames_done < 16 and s.state != "done") and time.monotonic() - start < 120:
        return 1.0
    win = bpy.context.window_manager.windows[0]
    area = props_area(win)
    region = next(r for r in area.regions if r.type == "WINDOW")
    if not phase["scrolled"]:
        with bpy.context.temp_override(window=win, area=area, region=region):
            for _ in range(60):
                bpy.ops.view2d.scroll_down(deltax=0, deltay=100)
        phase["scrolled"] = True
        area.tag_redraw()
        return 0.5
    with bpy.context.temp_override(window=win, area=area, region=region):
        bpy.ops.screen.screenshot_area(filepath=os.environ["SUANLI_SHOT_OUT"])
    bpy.ops.wm.quit_blender()
    return None

bpy.app.timers.register(setup, first_interval=2.0)
bpy.app.timers.register(shoot, first_interval=6.0)

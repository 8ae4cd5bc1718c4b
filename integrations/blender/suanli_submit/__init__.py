"""Suanli for Blender: submit the open .blend to a Suanli render farm, follow the job and
fetch its frames, from the Output properties.

Everything goes through the `suanli` binary (`submit --json`, `status --json`, `fetch
--json`), so the add-on needs no Python packages and speaks to the farm exactly as the
command line does: the farm address, store, studio and identity come from the add-on's
preferences, or else from the usual SUANLI_* environment variables.

Install: Edit > Preferences > Add-ons > Install..., pick suanli_submit.zip (a zip of this
folder), tick "Render: Suanli". See docs/PIPELINES.md.
"""

bl_info = {
    "name": "Suanli",
    "author": "Suanli",
    "version": (0, 1, 0),
    "blender": (3, 0, 0),
    "location": "Properties > Output > Suanli",
    "description": "Submit the open .blend to a Suanli render farm, follow it, fetch the frames",
    "category": "Render",
}

import json
import os
import subprocess
import threading

import bpy
from bpy.props import EnumProperty, IntProperty, PointerProperty, StringProperty

# How long one `suanli` call may take (submit uploads the inputs: give it time).
SUBMIT_TIMEOUT = 600
STATUS_TIMEOUT = 30
FETCH_TIMEOUT = 3600
POLL_SECONDS = 2.0
FINAL_STATES = {"done", "failed", "canceled"}


class SuanliPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    suanli_path: StringProperty(
        name="suanli binary",
        description="Path of the suanli command (or its name on PATH)",
        subtype="FILE_PATH",
        default="suanli",
    )
    nats: StringProperty(
        name="Farm (NATS URL)",
        description="The farm's NATS address, e.g. tls://farm.example:4222 (empty: SUANLI_NATS or the default)",
    )
    store: StringProperty(
        name="Store",
        description="Object store for inputs and frames, e.g. s3://bucket/prefix (empty: SUANLI_STORE)",
    )
    studio: StringProperty(
        name="Studio",
        description="Submit as this studio (empty: the identity's, or SUANLI_STUDIO)",
    )
    identity: StringProperty(
        name="Identity",
        description="Identity file of a secure farm (studio-<name>.nk)",
        subtype="FILE_PATH",
    )
    ca: StringProperty(
        name="CA",
        description="The secure farm's ca.pem",
        subtype="FILE_PATH",
    )

    def draw(self, context):
        col = self.layout.column()
        for name in ("suanli_path", "nats", "store", "studio", "identity", "ca"):
            col.prop(self, name)


def prefs(context):
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon else None


def suanli_command(context, *args):
    """The argv and environment of one `suanli` call, with the preferences applied."""
    p = prefs(context)
    env = dict(os.environ)
    binary = "suanli"
    if p is not None:
        binary = bpy.path.abspath(p.suanli_path) if p.suanli_path else "suanli"
        for var, value in (
            ("SUANLI_NATS", p.nats),
            ("SUANLI_STORE", p.store),
            ("SUANLI_STUDIO", p.studio),
            ("SUANLI_IDENTITY", bpy.path.abspath(p.identity) if p.identity else ""),
            ("SUANLI_CA", bpy.path.abspath(p.ca) if p.ca else ""),
        ):
            if value:
                env[var] = value
    return [binary, *args], env


def run_suanli(context, args, timeout, cwd=None):
    """Runs suanli and returns its JSON output; raises RuntimeError with its error line."""
    argv, env = suanli_command(context, *args)
    try:
        out = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError:
        raise RuntimeError(
            f"cannot run '{argv[0]}': set the suanli binary in the add-on's preferences"
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"suanli {args[0]} did not finish within {timeout} s")
    if out.returncode != 0 and not out.stdout.strip():
        lines = [l for l in out.stderr.splitlines() if l.strip()]
        raise RuntimeError(lines[-1] if lines else f"suanli {args[0]} exited {out.returncode}")
    try:
        return json.loads(out.stdout), out.returncode
    except ValueError:
        raise RuntimeError(f"suanli {args[0]} printed no JSON: {out.stdout[:200]}")


def frame_spec(scene):
    spec = f"{scene.frame_start}-{scene.frame_end}"
    if scene.frame_step > 1:
        spec += f"x{scene.frame_step}"
    return spec


def progress_text(done, total, width=24):
    """A text bar: the panel's progress (Blender 3.x layouts have no progress widget)."""
    filled = (done * width) // total if total else 0
    pct = (100 * done) // total if total else 0
    return "[" + "#" * filled + "-" * (width - filled) + f"] {pct}%"


class SuanliSettings(bpy.types.PropertyGroup):
    chunk: IntProperty(name="Chunk", description="Frames per task", default=1, min=1, max=1000)
    priority: IntProperty(name="Priority", description="Higher runs first", default=0, min=-100, max=100)
    regions: StringProperty(
        name="Regions",
        description="Regions allowed to render the job, comma-separated (empty: any)",
    )
    policy: EnumProperty(
        name="Policy",
        description="How the farm places the tasks",
        items=[
            ("FARM", "Farm default", "The farm's own policy"),
            ("balanced", "Balanced", "Money, time and carbon together"),
            ("cheapest", "Cheapest", "Lowest cost within the patience bound"),
            ("fastest", "Fastest", "Shortest time"),
            ("greenest", "Greenest", "Lowest carbon within the patience bound"),
        ],
        default="FARM",
    )
    fetch_dir: StringProperty(
        name="Frames to",
        description="Where Fetch puts the frames (// is the .blend's folder)",
        subtype="DIR_PATH",
        default="//suanli_frames/",
    )
    job_id: StringProperty(name="Job")
    state: StringProperty(name="State")
    frames_done: IntProperty(name="Frames done")
    frames_total: IntProperty(name="Frames")
    running: IntProperty(name="Running")
    message: StringProperty(name="Message")


# The status poll runs off Blender's main thread; its result is picked up by a timer, which
# alone touches Blender data.
_poll = {"thread": None, "result": None}


def _poll_in_background(argv, env):
    try:
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=STATUS_TIMEOUT)
        _poll["result"] = json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr.strip()}
    except Exception as e:  # noqa: BLE001 - reported in the panel
        _poll["result"] = {"error": str(e)}


def apply_status(settings, status):
    """Copies a `status --json` reply into the panel's fields."""
    if "error" in status:
        settings.message = status["error"].splitlines()[-1] if status["error"] else "status failed"
        return
    settings.state = status["state"]
    settings.frames_done = status["frames"]["done"]
    settings.frames_total = status["frames"]["total"]
    settings.running = status["tasks"]["running"]
    settings.message = status.get("reason") or ""


def _poll_timer():
    scene = bpy.context.scene
    if scene is None:
        return POLL_SECONDS
    settings = scene.suanli
    if _poll["result"] is not None:
        apply_status(settings, _poll["result"])
        _poll["result"] = None
        for area in getattr(bpy.context.screen, "areas", []):
            area.tag_redraw()
    if not settings.job_id or settings.state in FINAL_STATES:
        return None  # stop polling
    t = _poll["thread"]
    if t is None or not t.is_alive():
        argv, env = suanli_command(bpy.context, "status", settings.job_id, "--json")
        t = threading.Thread(target=_poll_in_background, args=(argv, env), daemon=True)
        _poll["thread"] = t
        t.start()
    return POLL_SECONDS


def start_polling():
    if not bpy.app.timers.is_registered(_poll_timer):
        bpy.app.timers.register(_poll_timer, first_interval=POLL_SECONDS)


class SUANLI_OT_submit(bpy.types.Operator):
    """Save the .blend and submit it to the Suanli farm with the scene's frame range"""

    bl_idname = "suanli.submit"
    bl_label = "Submit to Suanli"

    def execute(self, context):
        if not bpy.data.filepath:
            self.report({"ERROR"}, "save the .blend once (File > Save As) before submitting")
            return {"CANCELLED"}
        # The farm renders the file as saved: save it first.
        bpy.ops.wm.save_mainfile()
        scene = context.scene
        s = scene.suanli
        folder, name = os.path.split(bpy.data.filepath)
        args = [
            "submit",
            "--scene", name,
            "--renderer", "blender",
            "--frames", frame_spec(scene),
            "--chunk", str(s.chunk),
            "--priority", str(s.priority),
            "--name", os.path.splitext(name)[0],
            "--json",
        ]
        regions = ",".join(r.strip() for r in s.regions.split(",") if r.strip())
        if regions:
            args += ["--regions", regions]
        if s.policy != "FARM":
            args += ["--policy", s.policy]
        try:
            # Inputs are named relative to the .blend's folder.
            reply, _ = run_suanli(context, args, SUBMIT_TIMEOUT, cwd=folder)
        except RuntimeError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        s.job_id = reply["id"]
        s.state = "queued"
        s.frames_done = 0
        s.frames_total = 0
        s.running = 0
        s.message = f"{reply['tasks']} tasks, {reply['cached']} already rendered"
        self.report({"INFO"}, f"submitted job {reply['id']}")
        start_polling()
        return {"FINISHED"}


class SUANLI_OT_refresh(bpy.types.Operator):
    """Ask the farm for the job's progress now"""

    bl_idname = "suanli.refresh"
    bl_label = "Refresh"

    def execute(self, context):
        s = context.scene.suanli
        if not s.job_id:
            self.report({"ERROR"}, "no job submitted from this scene yet")
            return {"CANCELLED"}
        try:
            status, _ = run_suanli(context, ["status", s.job_id, "--json"], STATUS_TIMEOUT)
        except RuntimeError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        apply_status(s, status)
        return {"FINISHED"}


class SUANLI_OT_fetch(bpy.types.Operator):
    """Download the job's frames (each file verified against its hash)"""

    bl_idname = "suanli.fetch"
    bl_label = "Fetch frames"

    def execute(self, context):
        s = context.scene.suanli
        if not s.job_id:
            self.report({"ERROR"}, "no job submitted from this scene yet")
            return {"CANCELLED"}
        out = bpy.path.abspath(s.fetch_dir)
        try:
            report, code = run_suanli(context, ["fetch", s.job_id, "--out", out, "--json"], FETCH_TIMEOUT)
        except RuntimeError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        missing = len(report.get("missing", []))
        s.message = f"{report['frames']} frames in {out}" + (f", {missing} not rendered yet" if missing else "")
        self.report({"INFO"} if code == 0 else {"WARNING"}, s.message)
        return {"FINISHED"}


class SUANLI_PT_panel(bpy.types.Panel):
    bl_label = "Suanli"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "output"

    def draw(self, context):
        scene = context.scene
        s = scene.suanli
        layout = self.layout
        col = layout.column(align=True)
        col.label(text=f"Frames {frame_spec(scene)}  ({scene.render.engine.title()})")
        col.prop(s, "chunk")
        col.prop(s, "priority")
        col.prop(s, "regions")
        col.prop(s, "policy")
        layout.operator(SUANLI_OT_submit.bl_idname, icon="RENDER_ANIMATION")
        if s.job_id:
            box = layout.box()
            box.label(text=f"Job {s.job_id}")
            box.label(text=f"{s.state}: {s.frames_done}/{s.frames_total} frames, {s.running} running")
            box.label(text=progress_text(s.frames_done, s.frames_total))
            if s.message:
                box.label(text=s.message)
            row = box.row(align=True)
            row.operator(SUANLI_OT_refresh.bl_idname, icon="FILE_REFRESH")
            row.operator(SUANLI_OT_fetch.bl_idname, icon="IMPORT")
            box.prop(s, "fetch_dir")


CLASSES = (
    SuanliPreferences,
    SuanliSettings,
    SUANLI_OT_submit,
    SUANLI_OT_refresh,
    SUANLI_OT_fetch,
    SUANLI_PT_panel,
)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.suanli = PointerProperty(type=SuanliSettings)


def unregister():
    if bpy.app.timers.is_registered(_poll_timer):
        bpy.app.timers.unregister(_poll_timer)
    del bpy.types.Scene.suanli
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)

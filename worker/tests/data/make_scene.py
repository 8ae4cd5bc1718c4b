"""Writes a tiny, fast Cycles scene for Suanli's renderer tests.

Run with Blender (no add-ons, no user preferences):

    blender -b --factory-startup --python make_scene.py -- OUTPUT.blend [FRAMES]

The scene: a ground plane, a sphere that moves and a cube that turns (keyframed, so every
frame differs), one sun light and a camera; Cycles on the CPU, 64x48 pixels, 4 samples, a
fixed seed, denoising off (Debian's Blender has no OpenImageDenoise). FRAMES (default 4) is
the last frame of the animation; the scene's frame range is 1..FRAMES.
"""

import sys

import bpy

argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
if not argv:
    sys.exit("usage: blender -b --factory-startup --python make_scene.py -- OUTPUT.blend [FRAMES]")
output = argv[0]
n_frames = int(argv[1]) if len(argv) > 1 else 4
if n_frames < 1:
    sys.exit("FRAMES must be at least 1")

# Start from an empty scene: the factory startup has a cube, a light and a camera we replace.
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene


def paint(obj, name, color):
    """Gives `obj` a new material of this base colour; returns `obj`."""
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    mat.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (*color, 1)
    obj.data.materials.append(mat)
    return obj


bpy.ops.mesh.primitive_plane_add(size=20, location=(0, 0, 0))
paint(bpy.context.active_object, "ground", (0.2, 0.5, 0.2))
bpy.ops.mesh.primitive_uv_sphere_add(radius=1, location=(-1.5, 0, 1))
sphere = paint(bpy.context.active_object, "sphere", (0.8, 0.2, 0.1))
bpy.ops.mesh.primitive_cube_add(size=1.2, location=(1.5, 0, 0.6))
cube = paint(bpy.context.active_object, "cube", (0.1, 0.3, 0.9))

bpy.ops.object.light_add(type="SUN", location=(4, -4, 8))
sun = bpy.context.active_object
sun.rotation_euler = (0.6, 0.2, 0.8)
sun.data.energy = 4.0

bpy.ops.object.camera_add(location=(0, -8, 4), rotation=(1.15, 0, 0))
scene.camera = bpy.context.active_object

world = bpy.data.worlds.new("world")
world.use_nodes = True
world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.3, 0.4, 0.6, 1)
scene.world = world

# Keyframes: the sphere travels along x and the cube turns, frame 1 to n_frames.
scene.frame_start = 1
scene.frame_end = n_frames
sphere.location = (-1.5, 0, 1)
sphere.keyframe_insert(data_path="location", frame=1)
cube.rotation_euler = (0, 0, 0)
cube.keyframe_insert(data_path="rotation_euler", frame=1)
last = max(n_frames, 2)
sphere.location = (-1.5 + 0.5 * (last - 1), 0, 1)
sphere.keyframe_insert(data_path="location", frame=last)
cube.rotation_euler = (0, 0, 0.4 * (last - 1))
cube.keyframe_insert(data_path="rotation_euler", frame=last)

scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = 4
scene.cycles.preview_samples = 4
scene.cycles.use_adaptive_sampling = False
scene.cycles.use_denoising = False
scene.cycles.seed = 0
scene.cycles.use_animated_seed = False
scene.render.resolution_x = 64
scene.render.resolution_y = 48
scene.render.resolution_percentage = 100
scene.render.image_settings.file_format = "PNG"
scene.render.use_persistent_data = False

bpy.ops.wm.save_as_mainfile(filepath=output)
print("suanli: wrote test scene", output, "frames 1 to", n_frames)

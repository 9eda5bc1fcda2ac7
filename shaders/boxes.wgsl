// Instanced box overlay: every box of a frame in one draw call.
//
// Each instance is one box in image pixels; the vertex shader makes a quad
// around it (grown by half the stroke width plus one pixel for
// anti-aliasing) and maps it to clip space through `screen_from_image`. The
// fragment shader draws the outline: a stroke centred on the box edge,
// optionally dashed (missed ground truth), with an optional translucent fill.
//
// Keep in sync with `src/app/overlay.rs` (`Globals`, `BoxInstance`): sizes
// are asserted in tests there.

struct Globals {
    // screen point = image pixel * scale + offset (points)
    scale: vec2<f32>,
    offset: vec2<f32>,
    // size of the viewport the callback draws into, in points
    viewport_size: vec2<f32>,
    pixels_per_point: f32,
    _pad: f32,
};

struct BoxInstance {
    @location(0) rect: vec4<f32>,       // x1, y1, x2, y2 in image pixels
    @location(1) color: vec4<f32>,      // gamma-space sRGB RGBA (as egui paints), premultiplied here
    @location(2) fill_alpha: f32,       // 0: outline only
    @location(3) stroke_px: f32,        // stroke width in screen pixels
    @location(4) dash_px: f32,          // 0: solid; else dash length in screen pixels
    @location(5) _pad: f32,
};

@group(0) @binding(0) var<uniform> globals: Globals;

struct VsOut {
    @builtin(position) position: vec4<f32>,
    @location(0) local_px: vec2<f32>,       // position relative to the box's top-left, screen pixels
    @location(1) size_px: vec2<f32>,        // box size in screen pixels
    @location(2) color: vec4<f32>,
    @location(3) params: vec3<f32>,         // fill_alpha, stroke_px, dash_px
};

@vertex
fn vs_main(@builtin(vertex_index) vertex_index: u32, inst: BoxInstance) -> VsOut {
    // Two triangles: corners (0,0) (1,0) (0,1) (0,1) (1,0) (1,1).
    var corners = array<vec2<f32>, 6>(
        vec2<f32>(0.0, 0.0), vec2<f32>(1.0, 0.0), vec2<f32>(0.0, 1.0),
        vec2<f32>(0.0, 1.0), vec2<f32>(1.0, 0.0), vec2<f32>(1.0, 1.0),
    );
    let corner = corners[vertex_index];
    let ppp = globals.pixels_per_point;
    let min_pt = inst.rect.xy * globals.scale + globals.offset;
    let max_pt = inst.rect.zw * globals.scale + globals.offset;
    let size_px = (max_pt - min_pt) * ppp;
    let grow_px = inst.stroke_px * 0.5 + 1.0;
    let local_px = mix(vec2<f32>(-grow_px), size_px + vec2<f32>(grow_px), corner);
    let pos_pt = min_pt + local_px / ppp;
    let ndc = vec2<f32>(
        pos_pt.x / globals.viewport_size.x * 2.0 - 1.0,
        1.0 - pos_pt.y / globals.viewport_size.y * 2.0,
    );
    var out: VsOut;
    out.position = vec4<f32>(ndc, 0.0, 1.0);
    out.local_px = local_px;
    out.size_px = size_px;
    out.color = inst.color;
    out.params = vec3<f32>(inst.fill_alpha, inst.stroke_px, inst.dash_px);
    return out;
}

@fragment
fn fs_main(in: VsOut) -> @location(0) vec4<f32> {
    let p = in.local_px;
    let s = in.size_px;
    // Distance to the nearest edge line (negative inside the box).
    let d_edge = min(min(abs(p.x), abs(p.x - s.x)), min(abs(p.y), abs(p.y - s.y)));
    let inside = p.x >= 0.0 && p.y >= 0.0 && p.x <= s.x && p.y <= s.y;
    let half_stroke = in.params.y * 0.5;
    var stroke = clamp(half_stroke + 0.5 - d_edge, 0.0, 1.0);
    // Dashes run along the perimeter.
    let dash = in.params.z;
    if (dash > 0.0) {
        var along = p.x;
        if (abs(p.x) < half_stroke + 1.0 || abs(p.x - s.x) < half_stroke + 1.0) {
            along = p.y;
        }
        if (fract(along / (2.0 * dash)) > 0.5) {
            stroke = 0.0;
        }
    }
    var fill = 0.0;
    if (inside) {
        fill = in.params.x;
    }
    let alpha = max(stroke, fill) * in.color.a;
    if (alpha <= 0.0) {
        discard;
    }
    return vec4<f32>(in.color.rgb * alpha, alpha);
}

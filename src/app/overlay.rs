//! Our own wgpu pipeline for box overlays: every box of a frame is one
//! instance, and all of them are drawn with one instanced draw call through
//! an egui_wgpu paint callback (`shaders/boxes.wgsl`).
//!
//! egui's painter tessellates each rectangle outline into a mesh on the CPU
//! every frame; with 100k boxes that is the bottleneck. Here the CPU only
//! writes 48 bytes per box into an instance buffer and the GPU expands the
//! quads, strokes, dashes and fills (the pattern of rerun's re_renderer and
//! egui's custom3d_wgpu demo).
//!
//! The structs below are mirrored in WGSL; keep them in sync (sizes are
//! asserted in the tests, and the shader is validated with naga).

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use eframe::egui_wgpu::{self, wgpu};

/// The WGSL source.
pub const SHADER: &str = include_str!("../../shaders/boxes.wgsl");

/// Per-frame uniforms. Keep in sync with `Globals` in `shaders/boxes.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct Globals {
    /// screen point = image pixel × scale + offset (points, relative to the
    /// callback rectangle's top-left).
    pub scale: [f32; 2],
    /// See `scale`.
    pub offset: [f32; 2],
    /// Size of the callback rectangle in points.
    pub viewport_size: [f32; 2],
    /// Physical pixels per point.
    pub pixels_per_point: f32,
    /// Padding to 16-byte alignment.
    pub _pad: f32,
}

/// One box. Keep in sync with `BoxInstance` in `shaders/boxes.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BoxInstance {
    /// `x1, y1, x2, y2` in image pixels.
    pub rect: [f32; 4],
    /// Gamma-space sRGB RGBA in 0–1, as egui paints.
    pub color: [f32; 4],
    /// Fill opacity inside the box (0 = outline only).
    pub fill_alpha: f32,
    /// Stroke width in screen pixels.
    pub stroke_px: f32,
    /// Dash length in screen pixels (0 = solid).
    pub dash_px: f32,
    /// Padding.
    pub _pad: f32,
}

impl BoxInstance {
    /// A box outline in `color`.
    pub fn outline(rect: [f32; 4], color: egui::Color32, stroke_px: f32) -> Self {
        Self {
            rect,
            color: color.to_normalized_gamma_f32(),
            fill_alpha: 0.0,
            stroke_px,
            dash_px: 0.0,
            _pad: 0.0,
        }
    }

    /// The same box dashed.
    pub fn dashed(mut self, dash_px: f32) -> Self {
        self.dash_px = dash_px;
        self
    }

    /// The same box with a translucent fill.
    pub fn filled(mut self, fill_alpha: f32) -> Self {
        self.fill_alpha = fill_alpha;
        self
    }
}

const INSTANCE_ATTRIBUTES: [wgpu::VertexAttribute; 6] = wgpu::vertex_attr_array![
    0 => Float32x4, 1 => Float32x4, 2 => Float32, 3 => Float32, 4 => Float32, 5 => Float32
];

/// The pipeline, kept in egui_wgpu's callback resources, with one
/// [`Slot`] of buffers per canvas: two canvases in one frame (chosen
/// beside rejected, an evaluation sample beside the annotation view) each
/// draw their own boxes, because every callback writes and binds its own.
pub struct OverlayResources {
    pipeline: wgpu::RenderPipeline,
    bind_group_layout: wgpu::BindGroupLayout,
    slots: std::collections::HashMap<egui::Id, Slot>,
}

/// The uniforms and boxes of one canvas.
struct Slot {
    bind_group: wgpu::BindGroup,
    globals: wgpu::Buffer,
    instances: wgpu::Buffer,
    instance_capacity: usize,
    instance_count: u32,
}

impl Slot {
    fn new(device: &wgpu::Device, layout: &wgpu::BindGroupLayout) -> Slot {
        let globals = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("spr-boxes-globals"),
            size: std::mem::size_of::<Globals>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("spr-boxes"),
            layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: globals.as_entire_binding(),
            }],
        });
        let instance_capacity = 1024;
        Slot {
            bind_group,
            globals,
            instances: OverlayResources::instance_buffer(device, instance_capacity),
            instance_capacity,
            instance_count: 0,
        }
    }
}

impl OverlayResources {
    /// Build the pipeline for `target_format` and store it in the renderer's
    /// callback resources. Call once per renderer.
    pub fn install(render_state: &egui_wgpu::RenderState) {
        let device = &render_state.device;
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("spr-boxes"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let bind_group_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("spr-boxes"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::VERTEX,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: wgpu::BufferSize::new(std::mem::size_of::<Globals>() as u64),
                },
                count: None,
            }],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("spr-boxes"),
            bind_group_layouts: &[Some(&bind_group_layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("spr-boxes"),
            layout: Some(&layout),
            vertex: wgpu::VertexState {
                module: &shader,
                entry_point: Some("vs_main"),
                compilation_options: Default::default(),
                buffers: &[Some(wgpu::VertexBufferLayout {
                    array_stride: std::mem::size_of::<BoxInstance>() as u64,
                    step_mode: wgpu::VertexStepMode::Instance,
                    attributes: &INSTANCE_ATTRIBUTES,
                })],
            },
            fragment: Some(wgpu::FragmentState {
                module: &shader,
                entry_point: Some("fs_main"),
                compilation_options: Default::default(),
                targets: &[Some(wgpu::ColorTargetState {
                    format: render_state.target_format,
                    blend: Some(wgpu::BlendState::PREMULTIPLIED_ALPHA_BLENDING),
                    write_mask: wgpu::ColorWrites::ALL,
                })],
            }),
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            multiview_mask: None,
            cache: None,
        });
        render_state
            .renderer
            .write()
            .callback_resources
            .insert(OverlayResources {
                pipeline,
                bind_group_layout,
                slots: Default::default(),
            });
    }

    fn instance_buffer(device: &wgpu::Device, capacity: usize) -> wgpu::Buffer {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("spr-boxes-instances"),
            size: (capacity * std::mem::size_of::<BoxInstance>()) as u64,
            usage: wgpu::BufferUsages::VERTEX | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }
}

/// The paint callback of one canvas: its uniforms and boxes.
pub struct OverlayCallback {
    /// The canvas (its buffers' key).
    pub canvas: egui::Id,
    /// Uniforms.
    pub globals: Globals,
    /// The boxes.
    pub instances: Arc<Vec<BoxInstance>>,
}

impl egui_wgpu::CallbackTrait for OverlayCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen: &egui_wgpu::ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let Some(r) = resources.get_mut::<OverlayResources>() else {
            return Vec::new();
        };
        let layout = &r.bind_group_layout;
        let slot = r
            .slots
            .entry(self.canvas)
            .or_insert_with(|| Slot::new(device, layout));
        if self.instances.len() > slot.instance_capacity {
            slot.instance_capacity = self.instances.len().next_power_of_two();
            slot.instances = OverlayResources::instance_buffer(device, slot.instance_capacity);
        }
        queue.write_buffer(&slot.globals, 0, bytemuck::bytes_of(&self.globals));
        queue.write_buffer(&slot.instances, 0, bytemuck::cast_slice(&self.instances));
        slot.instance_count = self.instances.len() as u32;
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        render_pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        let Some(r) = resources.get::<OverlayResources>() else {
            return;
        };
        let Some(slot) = r.slots.get(&self.canvas) else {
            return;
        };
        if slot.instance_count == 0 {
            return;
        }
        render_pass.set_pipeline(&r.pipeline);
        render_pass.set_bind_group(0, &slot.bind_group, &[]);
        render_pass.set_vertex_buffer(0, slot.instances.slice(..));
        // One draw call for every box of this canvas: 6 vertices per instance.
        render_pass.draw(0..6, 0..slot.instance_count);
    }
}

/// The egui shape that draws `instances` over `rect` with `globals`.
pub fn paint_callback(
    canvas: egui::Id,
    rect: egui::Rect,
    globals: Globals,
    instances: Arc<Vec<BoxInstance>>,
) -> egui::Shape {
    egui::Shape::Callback(egui_wgpu::Callback::new_paint_callback(
        rect,
        OverlayCallback {
            canvas,
            globals,
            instances,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wgsl_module() -> naga::Module {
        naga::front::wgsl::parse_str(SHADER).expect("boxes.wgsl parses")
    }

    #[test]
    fn shader_validates_with_naga() {
        let module = wgsl_module();
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .expect("boxes.wgsl validates");
    }

    /// Size of the WGSL struct named `name`, as naga lays it out.
    fn wgsl_struct_size(module: &naga::Module, name: &str) -> u32 {
        let (_, ty) = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("struct {name} in boxes.wgsl"));
        match &ty.inner {
            naga::TypeInner::Struct { span, .. } => *span,
            other => panic!("{name} is {other:?}"),
        }
    }

    #[test]
    fn gpu_structs_match_their_wgsl_twins() {
        let module = wgsl_module();
        assert_eq!(
            std::mem::size_of::<Globals>() as u32,
            wgsl_struct_size(&module, "Globals")
        );
        assert_eq!(
            std::mem::size_of::<BoxInstance>() as u32,
            wgsl_struct_size(&module, "BoxInstance")
        );
        // The vertex attributes cover the instance struct exactly.
        let last = INSTANCE_ATTRIBUTES[INSTANCE_ATTRIBUTES.len() - 1];
        assert_eq!(last.offset + 4, std::mem::size_of::<BoxInstance>() as u64);
    }
}

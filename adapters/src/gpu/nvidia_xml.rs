//! `nvidia-smi -q -x` (the `nvidia_smi_log` XML document, DTD versions 9 to 13).
//!
//! The document is read with quick-xml into a small element tree (bounded depth; the input size is
//! bounded by [`MAX_INPUT_BYTES`](super::MAX_INPUT_BYTES)), then each `<gpu>` becomes one sample:
//!
//! - `index` is the GPU's position in the log: nvidia-smi lists GPUs in its own index order
//!   (`minor_number` is the `/dev/nvidiaN` number, a different thing, and is `N/A` on Windows);
//! - power is the first reading present of `power_readings/power_draw`,
//!   `gpu_power_readings/power_draw`, then the `average_power_draw` and `instant_power_draw` of either
//!   (schema 13 dropped `power_draw`);
//! - MIG instances (`mig_devices/mig_device`) are listed in the sample's [`MigInfo`] with their own
//!   memory, not reported as extra samples;
//! - `gpu_virtualization_mode/virtualization_mode` other than `None` (`VGPU`, `Pass-Through`, ...)
//!   is the virtualisation marker; a `GRID …` product without a mode is marked `VGPU`.
//!
//! Padded values (`  8192 MiB  `), XML declaration and DOCTYPE present or not, leading blank lines and
//! elements missing from hand-trimmed logs are all accepted.

use quick_xml::Reader;
use quick_xml::events::Event;

use super::error::excerpt;
use super::nvidia_csv::grid_marker;
use super::values::{self, BadValue};
use super::{GpuParseError, GpuSample, MigDevice, MigInfo, Vendor, banner, prepare_input};

/// Deepest element nesting accepted. Real logs nest about 7 levels; the bound keeps hostile input
/// from building a pathologically deep tree.
const MAX_DEPTH: usize = 64;

/// One XML element: its name, its text (concatenated, untrimmed) and its child elements.
#[derive(Debug, Default)]
struct Element {
    name: String,
    text: String,
    children: Vec<Element>,
}

impl Element {
    /// The first child called `name`.
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child called `name`.
    fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The descendant at a `/`-separated path of child names.
    fn at(&self, path: &str) -> Option<&Element> {
        path.split('/').try_fold(self, |el, name| el.child(name))
    }

    /// The text of the descendant at `path`, if that element exists.
    fn text_at(&self, path: &str) -> Option<&str> {
        self.at(path).map(|el| el.text.as_str())
    }
}

/// Read the whole document into a tree; the root element is returned.
fn read_tree(text: &str) -> Result<Element, GpuParseError> {
    let xml_err = |reader: &Reader<&[u8]>, e: &dyn std::fmt::Display| GpuParseError::Xml {
        msg: format!("at byte {}: {e}", reader.error_position()),
    };
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let event = reader.read_event().map_err(|e| xml_err(&reader, &e))?;
        match event {
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(GpuParseError::Xml { msg: "more than one root element".to_owned() });
            }
            Event::Start(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(GpuParseError::Xml { msg: format!("elements nested deeper than {MAX_DEPTH} levels") });
                }
                stack.push(Element { name: start.name().into_inner().to_owned(), ..Element::default() });
            }
            Event::Empty(start) => {
                let element = Element { name: start.name().into_inner().to_owned(), ..Element::default() };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => root = Some(element),
                }
            }
            Event::End(_) => {
                // quick-xml checks that end names match their start tags.
                let Some(element) = stack.pop() else {
                    return Err(GpuParseError::Xml { msg: "closing tag without an opening tag".to_owned() });
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => root = Some(element),
                }
            }
            Event::Text(t) => {
                let content = t.xml10_content();
                match stack.last_mut() {
                    Some(el) => el.text.push_str(&content),
                    None if content.trim().is_empty() => {}
                    None => {
                        return Err(GpuParseError::Xml {
                            msg: format!("text outside the root element: {:?}", excerpt(content.trim())),
                        });
                    }
                }
            }
            Event::CData(t) => {
                if let Some(el) = stack.last_mut() {
                    el.text.push_str(&t.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => {
                        quick_xml::escape::resolve_predefined_entity(&r.xml10_content()).map(str::to_owned).ok_or_else(
                            || GpuParseError::Xml { msg: format!("unknown entity &{};", excerpt(&r.xml10_content())) },
                        )?
                    }
                    Err(e) => return Err(xml_err(&reader, &e)),
                };
                if let Some(el) = stack.last_mut() {
                    el.text.push_str(&resolved);
                }
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(open) = stack.last() {
        return Err(GpuParseError::Xml {
            msg: format!("document ends inside <{}>: the capture is truncated", open.name),
        });
    }
    root.ok_or_else(|| GpuParseError::Xml { msg: "no root element".to_owned() })
}

/// Parse `nvidia-smi -q -x` output.
pub fn parse_nvidia_xml(text: &str) -> Result<Vec<GpuSample>, GpuParseError> {
    let text = prepare_input(text)?;
    if !text.trim_start().starts_with('<')
        && let Some(banner) = banner::nvidia_banner(text)
    {
        return Err(banner);
    }
    let root = read_tree(text)?;
    if root.name != "nvidia_smi_log" {
        return Err(GpuParseError::Xml {
            msg: format!(
                "the root element is <{}>, not <nvidia_smi_log>: this is not `nvidia-smi -q -x` output",
                excerpt(&root.name)
            ),
        });
    }
    let driver_version = root.text_at("driver_version").and_then(values::text);
    root.children_named("gpu")
        .enumerate()
        .map(|(position, gpu)| parse_gpu(gpu, position, driver_version.clone()))
        .collect()
}

/// Error for an unreadable value of `field` on `device`.
fn invalid(device: &str, field: &str, value: &str) -> GpuParseError {
    GpuParseError::InvalidValue { device: device.to_owned(), field: field.to_owned(), value: excerpt(value.trim()) }
}

/// Memory in MiB at `path`, `None` when absent or unavailable.
fn mib_at(el: &Element, path: &str, device: &str) -> Result<Option<u64>, GpuParseError> {
    match el.text_at(path) {
        None => Ok(None),
        Some(v) => values::mebibytes(v, None).map_err(|BadValue| invalid(device, path, v)),
    }
}

/// A count at `path`, `None` when absent or unavailable.
fn count_at(el: &Element, path: &str, device: &str) -> Result<Option<u32>, GpuParseError> {
    match el.text_at(path) {
        None => Ok(None),
        Some(v) => values::count(v).map_err(|BadValue| invalid(device, path, v)),
    }
}

/// One `<gpu>` element → one sample.
fn parse_gpu(gpu: &Element, position: usize, driver_version: Option<String>) -> Result<GpuSample, GpuParseError> {
    let device = format!("gpu {position}");
    let mut sample = GpuSample::empty(Vendor::Nvidia);
    sample.index = u32::try_from(position).ok();
    sample.name = gpu.text_at("product_name").and_then(values::text);
    sample.uuid = gpu.text_at("uuid").and_then(values::text);
    sample.driver_version = driver_version;
    sample.vram_total_mib = mib_at(gpu, "fb_memory_usage/total", &device)?;
    sample.vram_used_mib = mib_at(gpu, "fb_memory_usage/used", &device)?;
    if let Some(v) = gpu.text_at("utilization/gpu_util") {
        sample.utilization_pct =
            values::non_negative(v, &["%"]).map_err(|BadValue| invalid(&device, "utilization/gpu_util", v))?;
    }
    if let Some(v) = gpu.text_at("temperature/gpu_temp") {
        sample.temperature_c =
            values::real(v, &["C"]).map_err(|BadValue| invalid(&device, "temperature/gpu_temp", v))?;
    }
    const POWER_PATHS: [&str; 6] = [
        "power_readings/power_draw",
        "gpu_power_readings/power_draw",
        "power_readings/average_power_draw",
        "gpu_power_readings/average_power_draw",
        "power_readings/instant_power_draw",
        "gpu_power_readings/instant_power_draw",
    ];
    for path in POWER_PATHS {
        let Some(v) = gpu.text_at(path) else { continue };
        let watts = values::non_negative(v, &["W"]).map_err(|BadValue| invalid(&device, path, v))?;
        if watts.is_some() {
            sample.power_w = watts;
            break;
        }
    }
    sample.mig = parse_mig(gpu, &device)?;
    sample.virtualization = gpu
        .text_at("gpu_virtualization_mode/virtualization_mode")
        .and_then(values::text)
        .filter(|mode| !mode.eq_ignore_ascii_case("none"))
        .or_else(|| grid_marker(sample.name.as_deref()));
    Ok(sample)
}

/// MIG mode and instances of one GPU; `None` when the GPU reports no MIG mode (not MIG-capable).
fn parse_mig(gpu: &Element, device: &str) -> Result<Option<MigInfo>, GpuParseError> {
    let mode = gpu.text_at("mig_mode/current_mig").and_then(values::text);
    let pending_mode = gpu.text_at("mig_mode/pending_mig").and_then(values::text);
    let mut devices = Vec::new();
    if let Some(list) = gpu.child("mig_devices") {
        for (i, mig) in list.children_named("mig_device").enumerate() {
            let device = format!("{device} mig device {i}");
            devices.push(MigDevice {
                index: count_at(mig, "index", &device)?,
                gpu_instance_id: count_at(mig, "gpu_instance_id", &device)?,
                compute_instance_id: count_at(mig, "compute_instance_id", &device)?,
                multiprocessor_count: count_at(mig, "device_attributes/shared/multiprocessor_count", &device)?,
                vram_total_mib: mib_at(mig, "fb_memory_usage/total", &device)?,
                vram_used_mib: mib_at(mig, "fb_memory_usage/used", &device)?,
            });
        }
    }
    if mode.is_none() && pending_mode.is_none() && devices.is_empty() {
        return Ok(None);
    }
    Ok(Some(MigInfo { mode, pending_mode, devices }))
}

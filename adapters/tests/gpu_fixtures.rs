//! Data-driven tests of the GPU and Tailscale parsers against every captured fixture in
//! `fixtures/gpu-and-cloud/`: each file's parsed result (or error) is pinned in a snapshot under
//! `tests/snapshots/<tool>/<file>.txt` (regenerate with `UPDATE_EXPECT=1`, then read the diff against
//! the raw capture). A fixture without a snapshot, or a snapshot without a fixture, fails. Beyond the
//! snapshots: explicit assertions for the tricky captures, inline variants of the error banners, and a
//! deterministic no-panic sweep over truncated, mutated and random inputs.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use expect_test::expect_file;
use hwledger_adapters::gpu::{
    self, GpuFormat, GpuParseError, GpuSample, MAX_INPUT_BYTES, NVIDIA_QUERY, Vendor, parse_amd_smi, parse_nvidia_csv,
    parse_nvidia_xml, parse_rocm_smi, parse_system_profiler,
};
use hwledger_adapters::tailscale::{TailscaleParseError, TailscaleStatus, parse_status};

/// The fixture sub-directories these parsers own; each file in them has a snapshot.
const TOOL_DIRS: [&str; 6] =
    ["nvidia-smi-csv", "nvidia-smi-xml", "rocm-smi", "amd-smi", "system-profiler", "tailscale"];

fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/gpu-and-cloud")
}

fn snapshots_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots")
}

fn fixture(dir: &str, file: &str) -> String {
    let path = fixtures_root().join(dir).join(file);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Sorted file names in a fixture directory.
fn fixture_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = fs::read_dir(fixtures_root().join(dir))
        .unwrap_or_else(|e| panic!("list fixtures/{dir}: {e}"))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "README.md")
        .collect();
    files.sort();
    files
}

/// The `--query-gpu` that produced each header-less CSV fixture (from its source, see the fixture
/// README). Files with a header, and error banners, need none.
fn csv_query(file: &str) -> Option<&'static [&'static str]> {
    match file {
        "gpustat-issue5-8x-titan-x-noheader-nounits.csv" => {
            Some(&["index", "uuid", "name", "temperature.gpu", "utilization.gpu", "memory.used", "memory.total"])
        }
        "llama-swap-issue782-gb10-memory-na-noheader.csv" => {
            Some(&["memory.used", "memory.total", "utilization.memory"])
        }
        "megaminer-issue376-8gpu-mixed-1080ti-units-unknown-error.csv" => Some(&[
            "gpu_name",
            "utilization.gpu",
            "utilization.memory",
            "temperature.gpu",
            "power.draw",
            "power.limit",
            "fan.speed",
            "pstate",
            "clocks.current.graphics",
            "clocks.current.memory",
            "power.max_limit",
            "power.default_limit",
        ]),
        "prmon-issue317-2x-rtx-a6000-noheader-nounits.csv" => Some(&["clocks.max.sm", "memory.total", "gpu_name"]),
        _ => None,
    }
}

fn render_gpu(result: Result<Vec<GpuSample>, GpuParseError>) -> String {
    match result {
        Ok(samples) => format!("{} GPU(s)\n{samples:#?}\n", samples.len()),
        Err(e) => format!("error {}: {e}\n{e:#?}\n", e.code()),
    }
}

fn render_tailscale(result: Result<TailscaleStatus, TailscaleParseError>) -> String {
    match result {
        Ok(status) => format!("{} peer(s)\n{status:#?}\n", status.peers.len()),
        Err(e) => format!("error {}: {e}\n{e:#?}\n", e.code()),
    }
}

/// Parse one fixture with the parser for its directory and render the outcome.
fn render(dir: &str, file: &str) -> String {
    let text = fixture(dir, file);
    match dir {
        "nvidia-smi-csv" => render_gpu(parse_nvidia_csv(&text, csv_query(file))),
        "nvidia-smi-xml" => render_gpu(gpu::parse(GpuFormat::NvidiaSmiXml, &text)),
        "rocm-smi" => render_gpu(gpu::parse(GpuFormat::RocmSmi, &text)),
        "amd-smi" => render_gpu(gpu::parse(GpuFormat::AmdSmi, &text)),
        "system-profiler" => render_gpu(gpu::parse(GpuFormat::SystemProfiler, &text)),
        "tailscale" => render_tailscale(parse_status(&text)),
        other => panic!("no parser for fixtures/{other}"),
    }
}

fn check_snapshots(dir: &str) {
    let files = fixture_files(dir);
    assert!(!files.is_empty(), "fixtures/gpu-and-cloud/{dir} is empty");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        // expect-test writes the files but does not create their directory.
        fs::create_dir_all(snapshots_root().join(dir)).unwrap();
    }
    for file in files {
        let snapshot = snapshots_root().join(dir).join(format!("{file}.txt"));
        expect_file![snapshot].assert_eq(&render(dir, &file));
    }
}

#[test]
fn snapshots_nvidia_smi_csv() {
    check_snapshots("nvidia-smi-csv");
}

#[test]
fn snapshots_nvidia_smi_xml() {
    check_snapshots("nvidia-smi-xml");
}

#[test]
fn snapshots_rocm_smi() {
    check_snapshots("rocm-smi");
}

#[test]
fn snapshots_amd_smi() {
    check_snapshots("amd-smi");
}

#[test]
fn snapshots_system_profiler() {
    check_snapshots("system-profiler");
}

#[test]
fn snapshots_tailscale() {
    check_snapshots("tailscale");
}

/// Every fixture has a snapshot and every snapshot a fixture, so a new capture cannot go untested.
#[test]
fn snapshot_set_matches_fixture_set() {
    let mut expected = BTreeSet::new();
    for dir in TOOL_DIRS {
        for file in fixture_files(dir) {
            expected.insert(format!("{dir}/{file}.txt"));
        }
    }
    let mut actual = BTreeSet::new();
    if let Ok(dirs) = fs::read_dir(snapshots_root()) {
        for dir in dirs {
            let dir = dir.unwrap();
            let dir_name = dir.file_name().into_string().unwrap();
            for file in fs::read_dir(dir.path()).unwrap() {
                let file = file.unwrap().file_name().into_string().unwrap();
                actual.insert(format!("{dir_name}/{file}"));
            }
        }
    }
    let missing: Vec<_> = expected.difference(&actual).collect();
    let orphaned: Vec<_> = actual.difference(&expected).collect();
    assert!(
        missing.is_empty() && orphaned.is_empty(),
        "fixtures without a snapshot (run with UPDATE_EXPECT=1 and review): {missing:?}; \
         snapshots without a fixture: {orphaned:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Specific captures.

fn csv(file: &str) -> Result<Vec<GpuSample>, GpuParseError> {
    parse_nvidia_csv(&fixture("nvidia-smi-csv", file), csv_query(file))
}

fn xml(file: &str) -> Vec<GpuSample> {
    parse_nvidia_xml(&fixture("nvidia-smi-xml", file)).unwrap()
}

#[test]
fn csv_gpustat_eight_titan_x() {
    let gpus = csv("gpustat-issue5-8x-titan-x-noheader-nounits.csv").unwrap();
    assert_eq!(gpus.len(), 8);
    for (i, gpu) in gpus.iter().enumerate() {
        assert_eq!(gpu.index, Some(u32::try_from(i).unwrap()));
        assert_eq!(gpu.name.as_deref(), Some("GeForce GTX TITAN X"));
        assert_eq!(gpu.vram_total_mib, Some(12206));
        assert_eq!(gpu.vendor, Vendor::Nvidia);
    }
    assert_eq!(gpus[1].vram_used_mib, Some(10032));
    assert_eq!(gpus[1].utilization_pct, Some(86.0));
    assert_eq!(gpus[1].temperature_c, Some(54.0));
    assert_eq!(gpus[7].uuid.as_deref(), Some("GPU-f199c9ea-65d8-5382-aefe-a9e8fb48057b"));
}

#[test]
fn csv_units_in_values_and_unknown_error() {
    let gpus = csv("megaminer-issue376-8gpu-mixed-1080ti-units-unknown-error.csv").unwrap();
    assert_eq!(gpus.len(), 8);
    assert_eq!(gpus[0].name.as_deref(), Some("GeForce GTX 1080 Ti"));
    assert_eq!(gpus[0].utilization_pct, Some(53.0));
    assert_eq!(gpus[0].temperature_c, Some(84.0));
    assert_eq!(gpus[0].power_w, Some(123.0));
    assert_eq!(gpus[7].name.as_deref(), Some("GeForce GTX 1080"));
    assert_eq!(gpus[7].power_w, Some(181.22));
    // No index column in that query: the index is not invented.
    assert!(gpus.iter().all(|g| g.index.is_none()));
}

#[test]
fn csv_header_units_and_missing_total() {
    let gpus = csv("netdata-tesla-p100.csv").unwrap();
    assert_eq!(gpus.len(), 1);
    let p100 = &gpus[0];
    assert_eq!(p100.name.as_deref(), Some("Tesla P100-PCIE-16GB"));
    assert_eq!(p100.vram_used_mib, Some(0));
    assert_eq!(p100.vram_total_mib, None, "memory.total was not queried");
    assert_eq!(p100.utilization_pct, Some(0.0));
    assert_eq!(p100.temperature_c, Some(37.0));
    assert_eq!(p100.power_w, Some(28.16));
}

#[test]
fn csv_not_available_is_none_not_zero() {
    let gb10 = csv("llama-swap-issue782-gb10-memory-na-noheader.csv").unwrap();
    assert_eq!(gb10.len(), 1);
    assert_eq!(gb10[0].vram_used_mib, None);
    assert_eq!(gb10[0].vram_total_mib, None);

    let a100 = csv("stableswarmui-issue388-a100-mig-k8s-insufficient-permissions.csv").unwrap();
    assert_eq!(a100.len(), 1);
    assert_eq!(a100[0].name.as_deref(), Some("NVIDIA A100-SXM4-80GB"));
    assert_eq!(a100[0].driver_version.as_deref(), Some("535.161.08"));
    assert_eq!(a100[0].temperature_c, Some(47.0));
    assert_eq!(a100[0].utilization_pct, None);
    assert_eq!(a100[0].vram_total_mib, None);
    assert_eq!(a100[0].vram_used_mib, None);
}

#[test]
fn csv_name_as_last_column() {
    let gpus = csv("prmon-issue317-2x-rtx-a6000-noheader-nounits.csv").unwrap();
    assert_eq!(gpus.len(), 2);
    for gpu in &gpus {
        assert_eq!(gpu.name.as_deref(), Some("NVIDIA RTX A6000"));
        assert_eq!(gpu.vram_total_mib, Some(49140));
    }
}

#[test]
fn csv_full_query_with_mig() {
    let h100 = csv("nvgpuexp-linux-nvidia-h100-mig_590.48.01-load.csv").unwrap();
    assert_eq!(h100.len(), 1);
    let gpu = &h100[0];
    assert_eq!(gpu.utilization_pct, None, "MIG mode hides utilization.gpu");
    let mig = gpu.mig.as_ref().expect("MIG columns present");
    assert_eq!(mig.mode.as_deref(), Some("Enabled"));
    assert_eq!(gpu.vram_total_mib, Some(81559));
    assert_eq!(gpu.vram_used_mib, Some(11125));
    assert_eq!(gpu.power_w, Some(433.78));
    assert_eq!(gpu.temperature_c, Some(53.0), "temperature.gpu, not .tlimit");

    let plain = csv("nvgpuexp-linux-nvidia-h100-80gb-hbm3_590.48.01-load.csv").unwrap();
    assert_eq!(plain[0].mig.as_ref().and_then(|m| m.mode.as_deref()), Some("Disabled"));
    assert_eq!(plain[0].utilization_pct, Some(100.0));

    let rtx = csv("nvgpuexp-linux-nvidia-geforce-rtx-2080-super_595.71.05-idle.csv").unwrap();
    assert_eq!(rtx[0].mig, None, "mig.mode.current is [N/A] on GeForce");
    assert_eq!(rtx[0].power_w, Some(39.32));
    assert_eq!(rtx[0].driver_version.as_deref(), Some("595.71.05"));
}

#[test]
fn csv_error_banners_from_captures() {
    assert_eq!(
        csv("err-gcp-compute-gpu-installation-pr18-nvidia-smi-has-failed.txt"),
        Err(GpuParseError::DriverUnreachable)
    );
    assert_eq!(csv("err-open-gpu-kernel-modules-issue862-no-devices-found.txt"), Err(GpuParseError::NoDevices));
    assert_eq!(
        csv("err-open-gpu-kernel-modules-issue47-driver-library-mismatch.txt"),
        Err(GpuParseError::NvmlInit {
            detail: "Driver/library version mismatch".to_owned(),
            library_version: Some("570.124".to_owned()),
        })
    );
}

#[test]
fn driver_banner_variants() {
    let variants = [
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.\n",
        "NVIDIA-SMI has failed because it couldn\u{2019}t communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.",
        "\u{201c}NVIDIA-SMI has failed because it couldn\u{2018}t communicate with the NVIDIA driver.\u{201d}",
        "NVIDIA-SMI has failed because it couldn't\ncommunicate with the NVIDIA driver. Make sure that the\nlatest NVIDIA driver is installed and running.\n",
        "NVIDIA-SMI has failed because it\r\n    couldn\u{2019}t communicate with the NVIDIA\r\n  driver.\r\n",
        "\u{feff}\n\nnvidia-smi has failed because it couldn't communicate with the nvidia driver.",
    ];
    for text in variants {
        assert_eq!(parse_nvidia_csv(text, None), Err(GpuParseError::DriverUnreachable), "{text:?}");
        assert_eq!(parse_nvidia_xml(text), Err(GpuParseError::DriverUnreachable), "{text:?}");
    }
    assert_eq!(parse_nvidia_csv("No devices were found\r\n", None), Err(GpuParseError::NoDevices));
    assert_eq!(parse_nvidia_xml("  No devices were found.\n"), Err(GpuParseError::NoDevices));
    assert_eq!(
        parse_nvidia_csv("Failed to initialize NVML: Unknown Error\n", None),
        Err(GpuParseError::NvmlInit { detail: "Unknown Error".to_owned(), library_version: None })
    );
}

#[test]
fn csv_structure_errors_name_the_line() {
    let text = "index, name, memory.used [MiB]\n0, NVIDIA L4, 12\n1, NVIDIA L4\n";
    assert_eq!(
        parse_nvidia_csv(text, None),
        Err(GpuParseError::Csv {
            line: 3,
            msg: "expected 3 columns (index, name, memory.used [MiB]), found 2".to_owned(),
        })
    );
    let garbage = "index, memory.used [MiB]\n0, lots\n";
    let err = parse_nvidia_csv(garbage, None).unwrap_err();
    assert_eq!(err.code(), "csv");
    assert!(err.to_string().contains("line 2"), "{err}");
    assert!(err.to_string().contains("memory.used"), "{err}");
    assert_eq!(
        parse_nvidia_csv("pstate, fan.speed [%]\nP0, 30 %\n", None),
        Err(GpuParseError::UnknownColumns { columns: vec!["pstate".to_owned(), "fan.speed [%]".to_owned()] })
    );
    // hwledger's own query, header-less.
    let own = "0, GPU-1234, NVIDIA L4, 23034, 1, 2, 45, 27.22, 555.42.06\n";
    let gpus = parse_nvidia_csv(own, None).unwrap();
    assert_eq!(NVIDIA_QUERY.len(), 9);
    assert_eq!(gpus[0].vram_total_mib, Some(23034));
    assert_eq!(gpus[0].power_w, Some(27.22));
    assert_eq!(gpus[0].driver_version.as_deref(), Some("555.42.06"));
    // A wrong query for the output is a column-count error, not a misreading.
    assert_eq!(parse_nvidia_csv("[N/A], [N/A], 0\n", None).unwrap_err().code(), "csv");
}

#[test]
fn xml_mig_devices() {
    let gpus = xml("netdata-a100-sxm4-mig.xml");
    assert_eq!(gpus.len(), 1);
    let mig = gpus[0].mig.as_ref().unwrap();
    assert_eq!(mig.mode.as_deref(), Some("Enabled"));
    assert_eq!(mig.devices.len(), 2);
    assert_eq!(mig.devices[0].vram_total_mib, Some(19968));
    assert_eq!(mig.devices[0].vram_used_mib, Some(19));
    assert_eq!(mig.devices[1].gpu_instance_id, Some(2));
    assert_eq!(mig.devices[1].multiprocessor_count, Some(42));
    assert_eq!(gpus[0].utilization_pct, None);
    assert_eq!(gpus[0].virtualization.as_deref(), Some("Pass-Through"));

    let a100s = xml("telegraf-a100-sxm4-v12.xml");
    assert_eq!(a100s.len(), 1);
    assert_eq!(a100s[0].mig.as_ref().unwrap().devices.len(), 4);
}

#[test]
fn xml_power_locations_and_versions() {
    let a5000 = xml("telegraf-dual_a5000-v13.xml");
    assert_eq!(a5000.len(), 2);
    assert_eq!(a5000[0].power_w, Some(6.41), "schema 13: average_power_draw");
    assert_eq!(a5000[1].power_w, Some(13.60));
    assert_eq!(a5000[0].index, Some(0));
    assert_eq!(a5000[1].index, Some(1));
    assert_eq!(xml("netdata-tesla-p100.xml")[0].power_w, Some(26.16));
    assert_eq!(xml("serverbox-gt730-470.xml")[0].power_w, None);
    assert_eq!(xml("telegraf-quadro-p400.xml")[0].vram_total_mib, Some(1998));
    let l4 = xml("datarhei-2x-l4-555.xml");
    assert_eq!(l4.len(), 2);
    assert_eq!(l4[0].vram_total_mib, Some(23034));
    assert_eq!(l4[0].driver_version.as_deref(), Some("555.42.06"));
}

#[test]
fn xml_trimmed_sample_without_driver() {
    let gpus = xml("telegraf-gtx-1070-ti.xml");
    assert_eq!(gpus.len(), 1);
    assert_eq!(gpus[0].name.as_deref(), Some("GeForce GTX 1070 Ti"));
    assert_eq!(gpus[0].driver_version, None);
    assert_eq!(gpus[0].vram_total_mib, Some(4096));
    assert_eq!(gpus[0].temperature_c, Some(39.0));
    assert_eq!(gpus[0].power_w, None);
}

#[test]
fn xml_vgpu_guest() {
    let gpus = xml("telegraf-tesla_p4.xml");
    assert_eq!(gpus.len(), 1);
    assert_eq!(gpus[0].name.as_deref(), Some("GRID P4-1Q"));
    assert_eq!(gpus[0].virtualization.as_deref(), Some("VGPU"));
    assert_eq!(gpus[0].vram_total_mib, Some(1024));
    assert_eq!(gpus[0].mig, None);
}

#[test]
fn xml_padding_and_prologue_variants() {
    let body = "<nvidia_smi_log><driver_version> 535.1 </driver_version><gpu id=\"x\">\
        <product_name>  Tesla &amp; Co &#x41;  </product_name>\
        <fb_memory_usage><total>  8192 MiB  </total><used>N/A</used></fb_memory_usage>\
        <utilization><gpu_util> 7 % </gpu_util></utilization>\
        <gpu_power_readings><instant_power_draw>1.5 W</instant_power_draw></gpu_power_readings>\
        <mig_mode><current_mig>Disabled</current_mig></mig_mode></gpu></nvidia_smi_log>";
    let prologues = [
        "",
        "\n\n\n",
        "<?xml version=\"1.0\" ?>\n",
        "<?xml version=\"1.0\" ?>\n<!DOCTYPE nvidia_smi_log SYSTEM \"nvsmi_device_v9.dtd\">\n",
    ];
    for prologue in prologues {
        let gpus = parse_nvidia_xml(&format!("{prologue}{body}")).unwrap();
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].name.as_deref(), Some("Tesla & Co A"));
        assert_eq!(gpus[0].vram_total_mib, Some(8192));
        assert_eq!(gpus[0].vram_used_mib, None);
        assert_eq!(gpus[0].utilization_pct, Some(7.0));
        assert_eq!(gpus[0].power_w, Some(1.5));
        assert_eq!(gpus[0].driver_version.as_deref(), Some("535.1"));
        let mig = gpus[0].mig.as_ref().unwrap();
        assert_eq!(mig.mode.as_deref(), Some("Disabled"));
        assert!(mig.devices.is_empty());
    }
}

#[test]
fn xml_errors() {
    let truncated = "<nvidia_smi_log><gpu><product_name>X</product_name>";
    assert_eq!(parse_nvidia_xml(truncated).unwrap_err().code(), "xml");
    assert_eq!(parse_nvidia_xml("<html><body/></html>").unwrap_err().code(), "xml");
    let bad = "<nvidia_smi_log><gpu><fb_memory_usage><total>NaN MiB</total></fb_memory_usage></gpu></nvidia_smi_log>";
    assert_eq!(parse_nvidia_xml(bad).unwrap_err().code(), "invalid_value");
    let deep = format!("{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000));
    assert_eq!(parse_nvidia_xml(&deep).unwrap_err().code(), "xml");
    assert_eq!(parse_nvidia_xml("<nvidia_smi_log></nvidia_smi_log>"), Ok(Vec::new()));
}

#[test]
fn rocm_versions() {
    let rocm = |file: &str| parse_rocm_smi(&fixture("rocm-smi", file));
    let mi100 = rocm("telegraf-mi100_rocm571.json").unwrap();
    assert_eq!(mi100.len(), 6);
    assert_eq!(mi100[0].name.as_deref(), Some("Arcturus GL-XL [Instinct MI100]"));
    assert_eq!(mi100[0].vram_total_mib, Some(32752));
    assert_eq!(mi100[0].power_w, Some(39.0));
    assert_eq!(mi100[0].driver_version.as_deref(), Some("6.2.4"));
    assert!(mi100.iter().all(|g| g.vendor == Vendor::Amd));

    let old = rocm("telegraf-rx6700xt_rocm430.json").unwrap();
    assert_eq!(old[0].name, None, "0x1002 is a PCI ID, not a name");
    assert_eq!(old[0].uuid, None);
    assert_eq!(old[0].temperature_c, Some(45.0));
    assert_eq!(old[0].power_w, Some(6.0));

    let new = rocm("telegraf-rx6700xt_rocm602.json").unwrap();
    assert_eq!(new[0].name.as_deref(), Some("Navi 22 [Radeon RX 6700/6700 XT / 6800M]"));
    assert_eq!(new[0].power_w, None, "N/A (Secondary die)");

    let marimo = rocm("marimo-issue9237-rx7900xt-productname-use-vram.json").unwrap();
    assert_eq!(marimo[0].name.as_deref(), Some("Radeon RX 7900 XT"));
    assert_eq!(marimo[0].vram_total_mib, Some(20464));
    assert_eq!(marimo[0].vram_used_mib, Some(26));
    assert_eq!(marimo[0].temperature_c, None);

    let mi250 = rocm("wandb-mi250-rocm5-all-json.json").unwrap();
    assert_eq!(mi250[0].power_w, Some(89.0));
    assert_eq!(mi250[0].vram_total_mib, None, "not in that capture");
    assert_eq!(mi250[0].uuid.as_deref(), Some("0x719d230578348e8c"));

    assert_eq!(rocm("legacy-rocm-build-issue4374-mi300a-no-json-data.txt"), Err(GpuParseError::NoJsonData));
}

#[test]
fn amd_smi_and_apple() {
    let amd = parse_amd_smi(&fixture("amd-smi", "amdsmi-changelog-metric-power-json.json")).unwrap();
    assert_eq!(amd.len(), 1);
    assert_eq!(amd[0].index, Some(0));
    assert_eq!(amd[0].power_w, Some(10.0));
    assert_eq!(amd[0].name, None);

    let metric = r#"{"gpu_data": [{"gpu": 1, "usage": {"gfx_activity": {"value": 12, "unit": "%"}},
        "mem_usage": {"total_vram": {"value": 196592, "unit": "MB"}, "used_vram": {"value": "N/A", "unit": "MB"}},
        "temperature": {"edge": "N/A", "hotspot": {"value": 41, "unit": "C"}},
        "asic": {"market_name": "AMD Instinct MI300X"}}]}"#;
    let mi300 = parse_amd_smi(metric).unwrap();
    assert_eq!(mi300[0].index, Some(1));
    assert_eq!(mi300[0].utilization_pct, Some(12.0));
    assert_eq!(mi300[0].vram_total_mib, Some(196_592));
    assert_eq!(mi300[0].vram_used_mib, None);
    assert_eq!(mi300[0].temperature_c, Some(41.0));
    assert_eq!(mi300[0].name.as_deref(), Some("AMD Instinct MI300X"));
    assert_eq!(parse_amd_smi(r#"[{"gpu": -1}]"#).unwrap_err().code(), "invalid_value");

    for file in fixture_files("system-profiler") {
        let gpus = parse_system_profiler(&fixture("system-profiler", &file)).unwrap();
        assert_eq!(gpus.len(), 1, "{file}");
        assert_eq!(gpus[0].name.as_deref(), Some("Apple M1 (7-core GPU)"));
        assert_eq!(gpus[0].vendor, Vendor::Apple);
        assert_eq!(gpus[0].vram_total_mib, None, "unified memory");
    }
}

#[test]
fn tailscale_capture() {
    let status =
        parse_status(&fixture("tailscale", "unattributed-openwrt-ikuai-running-1peer-errbuildinfo.json")).unwrap();
    assert_eq!(status.version.as_deref(), Some("1.76.1-ERR-BuildInfo"));
    assert_eq!(status.backend_state.as_deref(), Some("Running"));
    let me = status.self_node.as_ref().unwrap();
    assert_eq!(me.host_name.as_deref(), Some("iKuai"));
    assert_eq!(me.addresses, vec!["100.104.58.51", "fd7a:115c:a1e0::ef01:3a34"]);
    assert_eq!(me.endpoints.len(), 7);
    assert_eq!(me.last_seen, None, "zero date");
    assert_eq!(status.peers.len(), 1);
    let peer = &status.peers[0];
    assert_eq!(peer.id, "nYNNjYYJCN11CNTRL");
    assert_eq!(peer.dns_name.as_deref(), Some("istoreos.tail1fb5f0.ts.net."));
    assert!(peer.endpoints.is_empty(), "Addrs: null");
    assert_eq!(peer.online, Some(true));
    assert_eq!(peer.os.as_deref(), Some("linux"));
    assert_eq!(peer.last_seen, None);
}

#[test]
fn trailing_text_after_json() {
    let text = "[{\"gpu\": 0}]\nMachine ID 24126 not found or not rentable.\n";
    assert_eq!(
        parse_amd_smi(text),
        Err(GpuParseError::TrailingGarbage { line: 2, text: "Machine ID 24126 not found or not rentable.".to_owned() })
    );
}

#[test]
fn format_names_round_trip() {
    for format in GpuFormat::ALL {
        assert_eq!(format.to_string().parse::<GpuFormat>(), Ok(format));
    }
    assert_eq!("nvidia-smi-xml".parse::<GpuFormat>(), Ok(GpuFormat::NvidiaSmiXml));
    assert!("nvidia".parse::<GpuFormat>().is_err());
}

#[test]
fn error_codes_are_stable() {
    let cases = [
        (GpuParseError::Empty, "empty"),
        (GpuParseError::TooLarge { len: 1, limit: 0 }, "too_large"),
        (GpuParseError::DriverUnreachable, "driver_unreachable"),
        (GpuParseError::NoDevices, "no_devices"),
        (GpuParseError::NvmlInit { detail: String::new(), library_version: None }, "nvml_init"),
        (GpuParseError::NoJsonData, "no_json_data"),
        (GpuParseError::TrailingGarbage { line: 1, text: String::new() }, "trailing_garbage"),
        (GpuParseError::Csv { line: 1, msg: String::new() }, "csv"),
        (GpuParseError::Xml { msg: String::new() }, "xml"),
        (GpuParseError::Json { msg: String::new() }, "json"),
        (GpuParseError::UnexpectedShape { msg: String::new() }, "unexpected_shape"),
        (GpuParseError::UnknownColumns { columns: Vec::new() }, "unknown_columns"),
        (
            GpuParseError::InvalidValue { device: String::new(), field: String::new(), value: String::new() },
            "invalid_value",
        ),
    ];
    for (error, code) in cases {
        assert_eq!(error.code(), code);
    }
}

#[test]
fn empty_and_oversized_input() {
    for format in GpuFormat::ALL {
        assert_eq!(gpu::parse(format, ""), Err(GpuParseError::Empty));
        assert_eq!(gpu::parse(format, " \n\t"), Err(GpuParseError::Empty));
        let big = "x".repeat(MAX_INPUT_BYTES + 1);
        assert_eq!(gpu::parse(format, &big).unwrap_err().code(), "too_large", "{format}");
    }
}

// ---------------------------------------------------------------------------------------------
// No parser panics, whatever the input.

/// Run every parser on `text`; the results do not matter, only that none panics.
fn parse_everything(text: &str) {
    let _ = parse_nvidia_csv(text, None);
    let _ = parse_nvidia_csv(text, Some(&["gpu_name", "memory.total"]));
    let _ = parse_nvidia_xml(text);
    let _ = parse_rocm_smi(text);
    let _ = parse_amd_smi(text);
    let _ = parse_system_profiler(text);
    let _ = parse_status(text);
}

/// Small captures of every format, truncated at every character boundary.
const SWEEP_FIXTURES: [(&str, &str); 8] = [
    ("nvidia-smi-csv", "netdata-tesla-p100.csv"),
    ("nvidia-smi-csv", "megaminer-issue376-8gpu-mixed-1080ti-units-unknown-error.csv"),
    ("nvidia-smi-xml", "telegraf-gtx-1070-ti.xml"),
    ("rocm-smi", "telegraf-rx6700xt_rocm602.json"),
    ("amd-smi", "amdsmi-changelog-metric-power-json.json"),
    ("system-profiler", "unattributed-m1-macbook-khw-name-7core.json"),
    ("tailscale", "unattributed-openwrt-ikuai-running-1peer-errbuildinfo.json"),
    ("nvidia-smi-csv", "err-open-gpu-kernel-modules-issue47-driver-library-mismatch.txt"),
];

#[test]
fn no_panic_on_truncations() {
    for (dir, file) in SWEEP_FIXTURES {
        let text = fixture(dir, file);
        for (cut, _) in text.char_indices() {
            parse_everything(&text[..cut]);
        }
        parse_everything(&text);
    }
}

#[test]
fn no_panic_on_mutations() {
    /// Characters that matter to one of the grammars, plus multi-byte and numeric edge cases.
    const REPLACEMENTS: [&str; 16] = [
        "\"",
        "<",
        ">",
        "/",
        ",",
        "[",
        "]",
        "{",
        "}",
        "\n",
        "é",
        "\u{2019}",
        "-",
        "99999999999999999999999",
        "NaN",
        "",
    ];
    for (dir, file) in SWEEP_FIXTURES {
        let text = fixture(dir, file);
        let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        for (n, &at) in boundaries.iter().enumerate() {
            let next = boundaries.get(n + 1).copied().unwrap_or(text.len());
            let replacement = REPLACEMENTS[n % REPLACEMENTS.len()];
            let mutated = format!("{}{replacement}{}", &text[..at], &text[next..]);
            parse_everything(&mutated);
        }
    }
}

/// Every fixture through every parser (XML into the CSV parser, tailscale JSON into rocm-smi, ...).
#[test]
fn no_panic_on_the_wrong_parser() {
    let root = fixtures_root();
    for dir in fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for file in fs::read_dir(&dir).unwrap() {
            let text = fs::read_to_string(file.unwrap().path()).unwrap();
            parse_everything(&text);
        }
    }
}

/// Pseudo-random strings from grammar tokens (xorshift, fixed seed, bounded count).
#[test]
fn no_panic_on_random_token_soup() {
    const TOKENS: [&str; 40] = [
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\n",
        " ",
        "<",
        ">",
        "</",
        "/>",
        "<gpu>",
        "</gpu>",
        "<nvidia_smi_log>",
        "</nvidia_smi_log>",
        "<fb_memory_usage>",
        "<total>",
        "</total>",
        "\"card0\"",
        "\"SPDisplaysDataType\"",
        "\"Peer\"",
        "\"Self\"",
        "null",
        "-1",
        "1e999",
        "18446744073709551616",
        "NaN",
        "[N/A]",
        " MiB",
        " %",
        " W",
        "index",
        "memory.used [MiB]",
        "name",
        "é",
        "&amp;",
        "&#0;",
        "\u{feff}",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3_000 {
        let len = next() % 60;
        let mut text = String::new();
        for _ in 0..len {
            let pick = usize::try_from(next() % TOKENS.len() as u64).unwrap();
            text.push_str(TOKENS[pick]);
        }
        parse_everything(&text);
    }
}

#[test]
fn hostile_numbers_and_nesting() {
    let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    parse_everything(&deep_json);
    assert_eq!(parse_amd_smi(&deep_json).unwrap_err().code(), "json");
    let deep_obj = format!("{}1{}", "{\"card0\":".repeat(5_000), "}".repeat(5_000));
    assert!(parse_rocm_smi(&deep_obj).is_err());
    for value in ["1e400", "-1", "NaN", "inf", "18446744073709551616", "0x10", "1.5.5", "\u{661}"] {
        let rocm = format!("{{\"card0\": {{\"VRAM Total Memory (B)\": \"{value}\"}}}}");
        assert_eq!(parse_rocm_smi(&rocm).unwrap_err().code(), "invalid_value", "{value}");
        let csv = format!("memory.total [MiB]\n{value}\n");
        assert_eq!(parse_nvidia_csv(&csv, None).unwrap_err().code(), "csv", "{value}");
    }
    let power = "power.draw [W], utilization.gpu [%]\n-5.0 W, 10 %\n";
    assert_eq!(parse_nvidia_csv(power, None).unwrap_err().code(), "csv");
}

//! The agent's collector against fake GPU tools: small shell scripts in a temporary directory that print
//! captured outputs from `fixtures/` (unchanged) and check the arguments they are called with. Covers the
//! detection order, the fallbacks (tool absent, "No devices were found"), the typed errors of a tool that
//! is installed but fails, the timeout and the output cap, and the commands built from a sample.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hwledger_adapters::agent::collector::{
    CollectError, Collector, CollectorOptions, Tool, ToolPaths, nvidia_smi_args,
};
use hwledger_adapters::agent::commands::{self, Inventory};
use hwledger_adapters::gpu::GpuParseError;
use hwledger_engine::Command;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(rel)
}

/// Writes an executable shell script `name` into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A fake tool that prints `fixture` when called with exactly `args`, and fails loudly otherwise.
fn printing(dir: &Path, name: &str, args: &[&str], fixture_rel: &str) -> PathBuf {
    let expected = args.join(" ");
    script(
        dir,
        name,
        &format!(
            "[ \"$*\" = \"{expected}\" ] || {{ echo \"unexpected arguments: $*\" >&2; exit 64; }}\ncat '{}'",
            fixture(fixture_rel).display()
        ),
    )
}

fn missing(dir: &Path, name: &str) -> Option<PathBuf> {
    Some(dir.join("not-installed").join(name))
}

fn collector(tools: ToolPaths) -> Collector {
    Collector::new(CollectorOptions { tools, timeout: Duration::from_secs(20), ..CollectorOptions::default() })
}

fn none() -> ToolPaths {
    ToolPaths { nvidia_smi: None, rocm_smi: None, amd_smi: None, system_profiler: None }
}

const H100: &str = "ssh/nvidia-smi-query-h100-80gb-hbm3-load.csv";

#[tokio::test]
async fn nvidia_smi_is_run_with_the_fixed_query_and_wins() {
    let dir = tempfile::tempdir().unwrap();
    let args = nvidia_smi_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tools = ToolPaths {
        nvidia_smi: Some(printing(dir.path(), "nvidia-smi", &args, H100)),
        rocm_smi: Some(script(dir.path(), "rocm-smi", "echo rocm-smi must not run >&2; exit 1")),
        ..none()
    };
    let sample = collector(tools).sample().await.unwrap();
    assert_eq!(sample.tool, Some(Tool::NvidiaSmi));
    assert_eq!(sample.gpus.len(), 1);
    let g = &sample.gpus[0];
    assert_eq!(g.name.as_deref(), Some("NVIDIA H100 80GB HBM3"));
    assert_eq!((g.vram_total_mib, g.vram_used_mib), (Some(81559), Some(19818)));
    assert_eq!((g.utilization_pct, g.temperature_c, g.power_w), (Some(100.0), Some(59.0), Some(631.95)));

    // The commands built from it carry exactly these values.
    let reg = Inventory::from_sample(Some("gpu-box".into()), &sample).register("box-1", 1000);
    let Command::RegisterDevice { device_id, hostname, gpus } = reg.command else { panic!("not a registration") };
    assert_eq!((device_id.as_str(), hostname.as_deref()), ("box-1", Some("gpu-box")));
    assert_eq!(gpus[0].uuid.as_deref(), Some("GPU-00000000-0000-0000-0000-000000000000"));
    assert_eq!(gpus[0].vram_total_mib, 81559);
    let hb = commands::heartbeat("box-1", 1000, &sample);
    assert_eq!(hb.command_id, "box-1:hb:1000");
}

#[tokio::test]
async fn absent_nvidia_smi_falls_back_to_rocm_smi() {
    let dir = tempfile::tempdir().unwrap();
    let rocm_args = hwledger_adapters::agent::collector::ROCM_SMI_ARGS;
    let tools = ToolPaths {
        nvidia_smi: missing(dir.path(), "nvidia-smi"),
        rocm_smi: Some(printing(
            dir.path(),
            "rocm-smi",
            rocm_args,
            "gpu-and-cloud/rocm-smi/marimo-issue9237-rx7900xt-productname-use-vram.json",
        )),
        ..none()
    };
    let sample = collector(tools).sample().await.unwrap();
    assert_eq!(sample.tool, Some(Tool::RocmSmi));
    assert_eq!(sample.gpus[0].name.as_deref(), Some("Radeon RX 7900 XT"));
    // 21458059264 bytes total, 27856896 used, in MiB.
    assert_eq!(sample.gpus[0].vram_total_mib, Some(20464));
    assert_eq!(sample.gpus[0].utilization_pct, Some(0.0));
    // Not reported by this capture: stays None in the heartbeat, never zero.
    let hb = commands::heartbeat("d", 1, &sample);
    let Command::RecordTelemetry { gpus, .. } = hb.command else { panic!() };
    assert_eq!((gpus[0].temperature_c, gpus[0].power_w), (None, None));
}

#[tokio::test]
async fn amd_smi_metric_without_static_still_reports_power() {
    let dir = tempfile::tempdir().unwrap();
    let tools = ToolPaths {
        nvidia_smi: missing(dir.path(), "nvidia-smi"),
        rocm_smi: missing(dir.path(), "rocm-smi"),
        amd_smi: Some(script(
            dir.path(),
            "amd-smi",
            &format!(
                "case \"$*\" in\n  'metric --json') cat '{}' ;;\n  *) echo 'static: not supported' >&2; exit 2 ;;\nesac",
                fixture("gpu-and-cloud/amd-smi/amdsmi-changelog-metric-power-json.json").display()
            ),
        )),
        ..none()
    };
    let sample = collector(tools).sample().await.unwrap();
    assert_eq!(sample.tool, Some(Tool::AmdSmi));
    assert_eq!(sample.gpus[0].power_w, Some(10.0));
    assert_eq!(sample.gpus[0].name, None);
    let inv = Inventory::from_sample(None, &sample);
    assert_eq!(inv.gpus[0].name, "AMD GPU (name not reported)");
}

#[tokio::test]
async fn system_profiler_on_apple_silicon() {
    let dir = tempfile::tempdir().unwrap();
    let sp_args = hwledger_adapters::agent::collector::SYSTEM_PROFILER_ARGS;
    let tools = ToolPaths {
        system_profiler: Some(printing(
            dir.path(),
            "system_profiler",
            sp_args,
            "gpu-and-cloud/system-profiler/unattributed-m1-macbook-khw-name-7core.json",
        )),
        ..none()
    };
    let sample = collector(tools).sample().await.unwrap();
    assert_eq!(sample.tool, Some(Tool::SystemProfiler));
    let inv = Inventory::from_sample(None, &sample);
    assert!(inv.gpus[0].name.starts_with("Apple M1"), "{:?}", inv.gpus[0].name);
    // Unified memory: no VRAM figure; the inventory says 0 (= unknown), the heartbeat says None.
    assert_eq!(inv.gpus[0].vram_total_mib, 0);
    let Command::RecordTelemetry { gpus, .. } = commands::heartbeat("mac", 1, &sample).command else { panic!() };
    assert_eq!(gpus[0].vram_total_mib, None);
}

#[tokio::test]
async fn no_tool_at_all_is_a_cpu_only_device() {
    let dir = tempfile::tempdir().unwrap();
    let tools = ToolPaths {
        nvidia_smi: missing(dir.path(), "nvidia-smi"),
        rocm_smi: missing(dir.path(), "rocm-smi"),
        amd_smi: missing(dir.path(), "amd-smi"),
        system_profiler: missing(dir.path(), "system_profiler"),
    };
    let sample = collector(tools).sample().await.unwrap();
    assert_eq!(sample.tool, None);
    assert!(sample.gpus.is_empty());
    let inv = Inventory::from_sample(None, &sample);
    assert!(inv.gpus.is_empty());
}

#[tokio::test]
async fn no_devices_found_passes_to_the_next_tool() {
    let dir = tempfile::tempdir().unwrap();
    let banner = fixture("gpu-and-cloud/nvidia-smi-csv/err-open-gpu-kernel-modules-issue862-no-devices-found.txt");
    let tools = ToolPaths {
        nvidia_smi: Some(script(dir.path(), "nvidia-smi", &format!("cat '{}'; exit 6", banner.display()))),
        rocm_smi: missing(dir.path(), "rocm-smi"),
        ..none()
    };
    let sample = collector(tools).sample().await.unwrap();
    assert_eq!(sample.tool, None);
}

#[tokio::test]
async fn installed_but_broken_driver_is_a_typed_error_not_a_cpu_only_sample() {
    let dir = tempfile::tempdir().unwrap();
    let banner =
        fixture("gpu-and-cloud/nvidia-smi-csv/err-gcp-compute-gpu-installation-pr18-nvidia-smi-has-failed.txt");
    let tools = ToolPaths {
        nvidia_smi: Some(script(dir.path(), "nvidia-smi", &format!("cat '{}'; exit 9", banner.display()))),
        ..none()
    };
    let err = collector(tools).sample().await.unwrap_err();
    assert!(
        matches!(err, CollectError::Parse { tool: Tool::NvidiaSmi, source: GpuParseError::DriverUnreachable }),
        "{err:?}"
    );
    assert_eq!(err.code(), "tool_parse");

    let mismatch =
        fixture("gpu-and-cloud/nvidia-smi-csv/err-open-gpu-kernel-modules-issue47-driver-library-mismatch.txt");
    let tools = ToolPaths {
        nvidia_smi: Some(script(dir.path(), "nvidia-smi2", &format!("cat '{}' >&2; exit 18", mismatch.display()))),
        ..none()
    };
    let err = collector(tools).sample().await.unwrap_err();
    assert!(matches!(err, CollectError::Parse { source: GpuParseError::NvmlInit { .. }, .. }), "{err:?}");
    assert!(err.to_string().contains("Driver/library version mismatch"), "{err}");
}

#[tokio::test]
async fn failing_tool_without_a_known_banner_reports_its_status_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let tools = ToolPaths {
        nvidia_smi: Some(script(dir.path(), "nvidia-smi", "echo 'Segmentation fault' >&2; exit 139")),
        ..none()
    };
    let err = collector(tools).sample().await.unwrap_err();
    match err {
        CollectError::Failed { tool: Tool::NvidiaSmi, exit_code: Some(139), ref stderr } => {
            assert_eq!(stderr, "Segmentation fault")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn garbage_on_success_is_a_parse_error() {
    let dir = tempfile::tempdir().unwrap();
    let tools = ToolPaths { nvidia_smi: Some(script(dir.path(), "nvidia-smi", "echo 'hello, world'")), ..none() };
    let err = collector(tools).sample().await.unwrap_err();
    assert!(matches!(err, CollectError::Parse { tool: Tool::NvidiaSmi, .. }), "{err:?}");
}

#[tokio::test]
async fn a_hung_tool_is_killed_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let tools = ToolPaths { nvidia_smi: Some(script(dir.path(), "nvidia-smi", "exec sleep 30")), ..none() };
    let c =
        Collector::new(CollectorOptions { tools, timeout: Duration::from_millis(300), ..CollectorOptions::default() });
    let err = c.sample().await.unwrap_err();
    assert!(matches!(err, CollectError::Timeout { tool: Tool::NvidiaSmi, .. }), "{err:?}");
}

#[tokio::test]
async fn runaway_output_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tools = ToolPaths {
        nvidia_smi: Some(script(
            dir.path(),
            "nvidia-smi",
            "i=0; while [ $i -lt 2000 ]; do echo 0123456789; i=$((i+1)); done",
        )),
        ..none()
    };
    let c = Collector::new(CollectorOptions { tools, max_output_bytes: 1024, ..CollectorOptions::default() });
    let err = c.sample().await.unwrap_err();
    assert!(matches!(err, CollectError::OutputTooLarge { limit: 1024, .. }), "{err:?}");
}

#[tokio::test]
async fn a_tool_that_cannot_be_executed_is_a_spawn_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nvidia-smi");
    std::fs::write(&path, "not executable").unwrap();
    let tools = ToolPaths { nvidia_smi: Some(path), ..none() };
    let err = collector(tools).sample().await.unwrap_err();
    assert!(matches!(err, CollectError::Spawn { tool: Tool::NvidiaSmi, .. }), "{err:?}");
}

//! One given/when/then test per rule of `decide`, named after the rule.

use hwledger_engine::Command;
use hwledger_engine::event::{Actor, Event};
use hwledger_engine::testing::{dispatched, enrolled, given, registered, telemetry};

fn decommissioned(id: &str) -> Event {
    Event::DeviceDecommissioned { device_id: id.into(), reason: "retired".into() }
}

fn dispatch(job: &str, dev: &str, vram: u64) -> Command {
    Command::DispatchJob {
        job_id: job.into(),
        device_id: dev.into(),
        model: "llama".into(),
        vram_mib: vram,
        price: None,
    }
}

#[test]
fn telemetry_for_unknown_device_is_rejected() {
    given([]).when(telemetry("dev-1", 1)).then_rejected("device_unknown");
}

#[test]
fn telemetry_for_decommissioned_device_is_rejected() {
    given([enrolled("dev-1"), decommissioned("dev-1")])
        .when(telemetry("dev-1", 1))
        .then_rejected("device_decommissioned");
}

#[test]
fn telemetry_for_enrolled_device_is_recorded() {
    let Command::RecordTelemetry { device_id, sampled_at, gpus } = telemetry("dev-1", 5) else { unreachable!() };
    given([enrolled("dev-1")]).when(telemetry("dev-1", 5)).then_events([Event::TelemetryRecorded {
        device_id,
        sampled_at,
        gpus,
    }]);
}

#[test]
fn dispatch_to_unknown_device_is_rejected() {
    given([]).when(dispatch("j1", "dev-1", 10)).then_rejected("device_unknown");
}

#[test]
fn dispatch_to_decommissioned_device_is_rejected() {
    given([enrolled("dev-1"), registered("dev-1", 24576), decommissioned("dev-1")])
        .when(dispatch("j1", "dev-1", 10))
        .then_rejected("device_decommissioned");
}

#[test]
fn requested_vram_must_fit_the_device() {
    given([enrolled("dev-1"), registered("dev-1", 24576)])
        .when(dispatch("j1", "dev-1", 24577))
        .then_rejected("vram_exceeded");
    given([enrolled("dev-1"), registered("dev-1", 24576)]).when(dispatch("j1", "dev-1", 24576)).then_events([
        Event::JobDispatched {
            job_id: "j1".into(),
            device_id: "dev-1".into(),
            model: "llama".into(),
            vram_mib: 24576,
            price: None,
        },
    ]);
}

#[test]
fn job_state_only_moves_forward() {
    let base = || given([enrolled("dev-1"), registered("dev-1", 24576), dispatched("j1", "dev-1")]);
    base().when(Command::CompleteJob { job_id: "j1".into(), exit_status: 0 }).then_rejected("job_transition");
    base().when(Command::StartJob { job_id: "j1".into() }).then_events([Event::JobStarted { job_id: "j1".into() }]);
    let done = given([
        enrolled("dev-1"),
        registered("dev-1", 24576),
        dispatched("j1", "dev-1"),
        Event::JobStarted { job_id: "j1".into() },
        Event::JobCompleted { job_id: "j1".into(), exit_status: 0 },
    ]);
    done.clone().when(Command::StartJob { job_id: "j1".into() }).then_rejected("job_transition");
    done.when(Command::FailJob { job_id: "j1".into(), exit_status: None, reason: "x".into() })
        .then_rejected("job_transition");
}

#[test]
fn unknown_job_cannot_be_started() {
    given([]).when(Command::StartJob { job_id: "nope".into() }).then_rejected("job_unknown");
}

#[test]
fn job_id_is_unique() {
    given([enrolled("dev-1"), registered("dev-1", 24576), dispatched("j1", "dev-1")])
        .when(dispatch("j1", "dev-1", 10))
        .then_rejected("job_exists");
}

#[test]
fn decommission_is_final() {
    let gone = || given([enrolled("dev-1"), decommissioned("dev-1")]);
    gone()
        .when(Command::DecommissionDevice { device_id: "dev-1".into(), reason: String::new() })
        .then_rejected("device_decommissioned");
    gone()
        .when(Command::EnrollDevice {
            device_id: "dev-1".into(),
            kind: hwledger_engine::event::DeviceKind::Local,
            hostname: None,
            labels: Default::default(),
        })
        .then_rejected("device_exists");
    gone()
        .when(Command::RegisterDevice { device_id: "dev-1".into(), hostname: None, gpus: vec![] })
        .then_rejected("device_decommissioned");
}

#[test]
fn agent_may_only_speak_for_its_own_device() {
    given([enrolled("dev-1"), enrolled("dev-2")])
        .when_as(Actor::Agent("dev-2".into()), telemetry("dev-1", 1))
        .then_rejected("forbidden");
    given([enrolled("dev-1")])
        .when_as(Actor::Agent("dev-1".into()), telemetry("dev-1", 1))
        .result
        .expect("own device accepted");
}

#[test]
fn agent_may_not_issue_operator_commands() {
    given([enrolled("dev-1"), registered("dev-1", 24576)])
        .when_as(Actor::Agent("dev-1".into()), dispatch("j1", "dev-1", 1))
        .then_rejected("forbidden");
    given([enrolled("dev-1")])
        .when_as(
            Actor::Agent("dev-1".into()),
            Command::DecommissionDevice { device_id: "dev-1".into(), reason: String::new() },
        )
        .then_rejected("forbidden");
}

#[test]
fn auditor_may_not_write() {
    given([enrolled("dev-1")]).when_as(Actor::Auditor("a".into()), telemetry("dev-1", 1)).then_rejected("forbidden");
}

#[test]
fn telemetry_values_must_be_in_range() {
    let Command::RecordTelemetry { device_id, sampled_at, mut gpus } = telemetry("dev-1", 1) else { unreachable!() };
    gpus[0].utilization_pct = Some(150.0);
    given([enrolled("dev-1")])
        .when(Command::RecordTelemetry { device_id, sampled_at, gpus })
        .then_rejected("invalid_command");
}

#[test]
fn bootstrap_token_is_single_use_and_expires() {
    let token = [7u8; 32];
    let created = Event::BootstrapTokenCreated { token_hash: token, device_id: "dev-9".into(), expires_at: 20_000 };
    let redeem = |fp: u8| Command::RedeemBootstrapToken {
        token_hash: token,
        fingerprint: [fp; 32],
        serial: "01".into(),
        not_after: 99_999,
        hostname: None,
    };
    given([created.clone()]).when(redeem(1)).result.expect("first use accepted");
    given([created.clone(), Event::BootstrapTokenUsed { token_hash: token }])
        .when(redeem(2))
        .then_rejected("token_used");
    given([]).when(redeem(1)).then_rejected("token_unknown");
    let expired = Event::BootstrapTokenCreated { token_hash: token, device_id: "dev-9".into(), expires_at: 5_000 };
    given([expired]).when(redeem(1)).then_rejected("token_expired");
}

/// Found by the `command_json` fuzz target: the offer id of a dispatch's price (from the command, or from the
/// quote a provider returned) was stored unchecked, so a 2 MiB offer id made an event body over the 1 MiB the
/// decoder accepts — an acknowledged event no reader could decode — and control characters reached the log.
#[test]
fn dispatch_price_text_is_bounded_like_all_free_text() {
    use hwledger_engine::Context;
    use hwledger_engine::event::PriceQuote;
    let quote = |offer_id: &str| PriceQuote {
        source: "vast".into(),
        micro_usd_per_hour: 1,
        offer_id: Some(offer_id.into()),
        quoted_at: 1,
    };
    let priced = |offer_id: &str| Command::DispatchJob {
        job_id: "job-1".into(),
        device_id: "dev-1".into(),
        model: "llama".into(),
        vram_mib: 1,
        price: Some(quote(offer_id)),
    };
    let fleet = || given([enrolled("dev-1"), registered("dev-1", 1024)]);
    for bad in ["o".repeat(2 << 20), "x".repeat(1025), "offer\u{1b}[31m".to_owned()] {
        fleet().when(priced(&bad)).then_rejected("invalid_command");
        // The same offer id arriving in the context's quote (a provider's answer at dispatch).
        let state = fleet().state().clone();
        let ctx = Context { quote: Some(quote(&bad)), ..Context::new(Actor::System, 10_000) };
        let result = hwledger_engine::decide(&state, &dispatch("job-1", "dev-1", 1), &ctx);
        assert_eq!(result.map_err(|r| r.code()), Err("invalid_command"));
    }
    assert!(fleet().when(priced(&"o".repeat(1024))).result.is_ok(), "1024 bytes are fine");
}

#[test]
fn rejection_codes_are_stable() {
    use hwledger_engine::Rejection as R;
    let codes: Vec<&str> = [
        R::DeviceUnknown { device_id: String::new() },
        R::DeviceDecommissioned { device_id: String::new() },
        R::DeviceExists { device_id: String::new() },
        R::JobUnknown { job_id: String::new() },
        R::JobExists { job_id: String::new() },
        R::JobTransition { job_id: String::new(), from: "", to: "" },
        R::VramExceeded { device_id: String::new(), requested_mib: 0, available_mib: 0 },
        R::Forbidden { actor: String::new(), action: String::new() },
        R::VersionConflict { stream: String::new(), expected: 0, actual: 0 },
        R::DuplicateConflict { command_id: String::new() },
        R::Invalid(String::new()),
        R::TokenUnknown,
        R::TokenExpired,
        R::TokenUsed,
        R::CertificateUnknown { fingerprint: String::new() },
        R::CertificateExists { fingerprint: String::new() },
    ]
    .iter()
    .map(|r| r.code())
    .collect();
    assert_eq!(
        codes,
        [
            "device_unknown",
            "device_decommissioned",
            "device_exists",
            "job_unknown",
            "job_exists",
            "job_transition",
            "vram_exceeded",
            "forbidden",
            "version_conflict",
            "duplicate_conflict",
            "invalid_command",
            "token_unknown",
            "token_expired",
            "token_used",
            "certificate_unknown",
            "certificate_exists"
        ]
    );
}

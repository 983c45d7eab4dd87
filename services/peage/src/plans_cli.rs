//! `peage plans migrate`: moves every partner on one plan (or one version of it) to another,
//! scheduled like `PUT /v1/partners/{id}/subscription`; `--dry-run` lists who would move, when,
//! and what each pays this period against what they would pay on the new plan.

use anyhow::{bail, Context};
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use peage_billing::service::ChangeAt;
use peage_billing::service::SubscriptionOutcome;
use serde::Serialize;

use crate::invoice_cli::{invoicing, Target};

#[derive(Debug, clap::Subcommand)]
pub enum PlansCommand {
    /// Schedule a move of every partner on PLAN (or PLAN@VERSION, a version or its first
    /// characters) to another plan. A change of currency or billing period is scheduled only
    /// where a period of both plans starts.
    Migrate {
        /// The plan partners are on: `growth`, or `growth@3f2a9c` for one version of it.
        #[arg(long)]
        from: String,
        /// The plan they move to (its version in force when the move takes effect).
        #[arg(long)]
        to: String,
        /// `next_period` (each partner's current period end), `now`, or a date (2027-01-01).
        #[arg(long, default_value = "next_period")]
        at: String,
        /// List who would move, when, and what each would pay; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// `text` or `json`.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
        #[command(flatten)]
        target: Target,
    },
}

/// One partner of a migration.
#[derive(Debug, Serialize)]
struct Move {
    partner_id: String,
    name: String,
    plan_version: String,
    /// When they move (RFC 3339), or null when refused.
    at: Option<String>,
    /// Why not, when refused.
    refused: Option<String>,
    /// This period so far on their plan: amount due and currency.
    current: Option<(String, String)>,
    /// The same usage on the new plan (its own period, from when they joined).
    on_new_plan: Option<(String, String)>,
    /// `scheduled`, `refused`, or `would move` in a dry run.
    outcome: String,
}

pub async fn run(command: PlansCommand) -> anyhow::Result<bool> {
    let PlansCommand::Migrate {
        from,
        to,
        at,
        dry_run,
        format,
        target,
    } = command;
    let engine = invoicing(&target).await?;
    let at = ChangeAt::parse(&at).map_err(|e| anyhow::anyhow!("--at: {e}"))?;
    let (from_plan, from_version) = match from.split_once('@') {
        Some((p, v)) if !v.is_empty() => (p.to_string(), Some(v.to_string())),
        Some(_) => bail!("--from {from:?}: say the version after @, or leave @ out"),
        None => (from.clone(), None),
    };
    let to_plan = engine
        .catalog
        .plan(&to)
        .with_context(|| format!("--to: no plan {to:?} in the catalog"))?
        .clone();
    if to_plan.id == from_plan {
        bail!("--from and --to name the same plan {to:?}: a new version reaches its partners on reload");
    }
    let partners: Vec<_> = engine
        .store
        .partners()
        .await
        .context("reading partners")?
        .into_iter()
        .filter(|p| {
            p.subscription.plan_id == from_plan
                && from_version
                    .as_deref()
                    .is_none_or(|v| p.subscription.plan_version.starts_with(v))
        })
        .collect();
    let bar = ProgressBar::new(partners.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} partners · eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if format == "json" {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let now = Utc::now();
    let by = "cli: peage plans migrate";
    let mut moves = Vec::with_capacity(partners.len());
    for partner in partners {
        let mut m = Move {
            partner_id: partner.id.to_string(),
            name: partner.name.clone(),
            plan_version: partner.subscription.plan_version.clone(),
            at: None,
            refused: None,
            current: None,
            on_new_plan: None,
            outcome: String::new(),
        };
        let amount = |r: &peage_core::InvoiceRecord| {
            (
                r.invoice.amount_due.to_string(),
                r.invoice.currency.code().to_string(),
            )
        };
        if dry_run {
            match engine.check_change(&partner, &to, at, now).await {
                Ok(t) => {
                    m.at = Some(t.to_rfc3339());
                    m.outcome = "would move".into();
                }
                Err(e) => {
                    m.refused = Some(e.to_string());
                    m.outcome = "refused".into();
                }
            }
            m.current = engine
                .upcoming(&partner, now)
                .await
                .ok()
                .map(|r| amount(&r));
            m.on_new_plan = engine
                .preview(&partner, &to_plan, now)
                .await
                .ok()
                .map(|r| amount(&r));
        } else {
            match engine.change_subscription(partner, &to, at, by, now).await {
                Ok(SubscriptionOutcome::Scheduled { change, .. }) => {
                    m.at = Some(change.at.to_rfc3339());
                    m.outcome = "scheduled".into();
                }
                Ok(SubscriptionOutcome::Changed { .. }) => {
                    m.at = Some(now.to_rfc3339());
                    m.outcome = "moved".into();
                }
                Ok(SubscriptionOutcome::Unchanged(_)) => m.outcome = "unchanged".into(),
                Err(e) => {
                    m.refused = Some(e.to_string());
                    m.outcome = "refused".into();
                }
            }
        }
        moves.push(m);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let refused = moves.iter().filter(|m| m.refused.is_some()).count();
    if format == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "from": from, "to": to, "dry_run": dry_run, "partners": moves,
            }))?
        );
    } else {
        print_moves(&from, &to, dry_run, &moves);
    }
    Ok(refused == 0)
}

fn print_moves(from: &str, to: &str, dry_run: bool, moves: &[Move]) {
    let verb = if dry_run { "would move" } else { "moving" };
    println!("{} partner(s) on {from} {verb} to {to}:", moves.len());
    let money = |m: &Option<(String, String)>| {
        m.as_ref()
            .map_or("—".to_string(), |(a, c)| format!("{a} {c}"))
    };
    for m in moves {
        match &m.refused {
            None if dry_run => println!(
                "  {} {:<24} {:<10} at {}  this period {} → on {to} {}",
                m.partner_id,
                m.name,
                m.outcome,
                m.at.as_deref().unwrap_or("—"),
                money(&m.current),
                money(&m.on_new_plan),
            ),
            None => println!(
                "  {} {:<24} {:<10} at {}",
                m.partner_id,
                m.name,
                m.outcome,
                m.at.as_deref().unwrap_or("—"),
            ),
            Some(why) => println!("  {} {:<24} REFUSED: {why}", m.partner_id, m.name),
        }
    }
    if dry_run {
        println!("Dry run: nothing was changed. Run again without --dry-run to schedule.");
    }
}

//! The distributed roles, each its own process, all configured by one `peage.toml`:
//! `peage migrate`, `peage gateway`, `peage aggregator`, `peage billing`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use peage_aggregator::{Aggregator, AggregatorConfig, UsageAggregator};
use peage_billing_store::{BillingStore, PostgresBillingStore};
use peage_eventlog::kafka::{
    ensure_topics, KafkaConsumer, KafkaDeadLetters, SpoolConfig, SpooledKafkaLog,
};
use peage_eventlog::{EventEmitter, EventLog};
use peage_gateway::quota::HttpQuotaAuthority;
use peage_gateway::{Clients, Gateway, GatewayServer, KeyCache, Quotas};
use peage_usage_store::ClickHouseUsageStore;
use tokio::sync::watch;

use crate::config::PeageConfig;
use crate::metrics::{self, read, Sample};
use crate::node::Ops;
use crate::up::load_catalog;
use peage_gateway::billing::BillingKeys;

pub(crate) async fn clickhouse(config: &PeageConfig) -> anyhow::Result<ClickHouseUsageStore> {
    ClickHouseUsageStore::connect(&config.clickhouse)
        .await
        .context("connecting to ClickHouse ([clickhouse] url)")
}

pub(crate) async fn postgres(config: &PeageConfig) -> anyhow::Result<PostgresBillingStore> {
    PostgresBillingStore::connect(&config.postgres.url)
        .await
        .context("connecting to PostgreSQL ([postgres] url)")
}

/// Creates or upgrades everything the roles need: ClickHouse schema, PostgreSQL schema, Kafka
/// topics. Idempotent.
pub async fn migrate(config: &PeageConfig) -> anyhow::Result<()> {
    let ch = clickhouse(config).await?;
    let applied = ch.migrate().await.context("ClickHouse migrations")?;
    println!(
        "clickhouse: {} migration(s) applied{}",
        applied.len(),
        if applied.is_empty() {
            " (up to date)".to_string()
        } else {
            format!(": {}", applied.join(", "))
        }
    );
    postgres(config).await?; // applies its migrations on connect
    println!("postgres: schema up to date");
    ensure_topics(&config.kafka)
        .await
        .context("creating the Kafka topics")?;
    println!(
        "kafka: topics {} and {} ready",
        config.kafka.topic, config.kafka.dead_letter_topic
    );
    Ok(())
}

/// `peage gateway`: authenticates, proxies and meters; events go through the local spool to
/// Kafka. On SIGTERM it drains calls, then gives the spool up to 10 s to reach Kafka (what is
/// left stays on disk for the next start).
pub async fn gateway(
    config: &PeageConfig,
    ops: &Ops,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let catalog = Arc::new(load_catalog(&config.catalog_path(), None)?);
    ensure_topics(&config.kafka)
        .await
        .context("creating the Kafka topics")?;
    let spool = SpooledKafkaLog::start(&config.kafka, config.spool.clone())
        .await
        .context("opening the spool")?;
    let emitter = EventEmitter::start(Arc::clone(&spool) as Arc<dyn EventLog>, 65_536);
    let mut gateway_config = config.gateway.gateway_config(crate::up::jwt_config(
        &config.oauth.config(),
        &config.gateway.billing_url,
    ))?;
    gateway_config.outbound.partner_urls = config.outbound.policy()?;
    let clients = Clients::new(gateway_config.outbound.clone());
    let billing_token = config.gateway.billing_token(&config.control)?;
    // Keys, issuers and revocations come from billing's control API, never its database.
    let billing_keys = BillingKeys::new(
        &config.gateway.billing_url,
        &billing_token,
        Duration::from_secs(2),
        &clients,
    )
    .map_err(|e| anyhow::anyhow!("gateway.billing_url: {e}"))?;
    let keys = KeyCache::with_stale(
        Arc::new(billing_keys.clone()),
        Duration::from_millis(config.gateway.key_cache_ttl_ms),
        Duration::from_millis(config.gateway.key_stale_ms),
    );
    let authority = HttpQuotaAuthority::new(
        &config.gateway.billing_url,
        &billing_token,
        Duration::from_secs(2),
        &clients,
    )
    .map_err(|e| anyhow::anyhow!("gateway.billing_url: {e}"))?;
    let revocations = keys.clone();
    let quotas = Quotas::new(
        Arc::new(authority),
        config.gateway.quota_config(),
        config.gateway.id.clone(),
    );
    let quota_stats = quotas.stats();
    let gw = Gateway::new(catalog, keys, emitter.clone(), Some(quotas), gateway_config);
    let server = GatewayServer::bind(Arc::clone(&gw), config.gateway.listen)
        .with_context(|| format!("gateway cannot listen on {}", config.gateway.listen))?;
    let addr = server.local_addr();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // The catalog of record: billing's, followed every second.
    tokio::spawn(peage_gateway::billing::follow_catalog(
        billing_keys.clone(),
        Arc::clone(&gw),
        config.gateway.id.clone(),
        Duration::from_secs(1),
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(peage_gateway::billing::follow_revocations(
        billing_keys,
        revocations,
        stopped(stop_rx.clone()),
    ));
    {
        let ready_spool = Arc::clone(&spool);
        let (spool, emitter) = (Arc::clone(&spool), emitter.clone());
        let samples = move || -> Vec<Sample> {
            let mut v = metrics::gateway_samples(emitter.stats(), &quota_stats);
            v.extend(metrics::spool_samples(&spool));
            v
        };
        let gw_metrics = Arc::clone(&gw);
        let exposition = move || {
            metrics::render(&samples())
                + &gw_metrics.render_metrics()
                + &metrics::catalog_info(&gw_metrics.catalog().version)
        };
        let (spool, gw_ready) = (ready_spool, Arc::clone(&gw));
        let readiness = metrics::ready_when(move || {
            vec![
                metrics::Check::new(
                    "spool",
                    spool.accepting(),
                    format!("{} events waiting for Kafka", spool.pending()),
                ),
                metrics::Check::new("catalog", true, gw_ready.catalog().version.clone()),
            ]
        });
        ops.add(Arc::new(exposition), readiness);
    }
    tracing::info!(listen = %addr, id = %config.gateway.id, topic = %config.kafka.topic, threads = gw.serving_threads(), "gateway up");
    let scheme = if config.gateway.tls_cert_file.is_some() {
        "https"
    } else {
        "http"
    };
    println!("peage gateway listening on {scheme}://{addr}");
    shutdown.await;
    let _ = stop_tx.send(true);
    server.stop().await;
    emitter.flush().await;
    let left = spool.drain(Duration::from_secs(10)).await;
    if left > 0 {
        tracing::warn!(
            events = left,
            "gateway stopping with events still in the spool; they are sent at the next start"
        );
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// `peage aggregator`: Kafka → ClickHouse, exactly once (docs/exactly-once.md).
pub async fn aggregator(
    config: &PeageConfig,
    ops: &Ops,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // One batch is one INSERT, which ClickHouse applies whole only below max_insert_block_size
    // (1,048,576 rows): docs/exactly-once.md.
    if !(1..=1_000_000).contains(&config.aggregator.max_batch) {
        anyhow::bail!(
            "aggregator.max_batch must be between 1 and 1000000, not {}",
            config.aggregator.max_batch
        );
    }
    if !(100..=120_000).contains(&config.aggregator.insert_timeout_ms) {
        anyhow::bail!(
            "aggregator.insert_timeout_ms must be between 100 and 120000, not {}",
            config.aggregator.insert_timeout_ms
        );
    }
    if !(1..=16).contains(&config.aggregator.parallel_inserts) {
        anyhow::bail!(
            "aggregator.parallel_inserts must be between 1 and 16, not {}",
            config.aggregator.parallel_inserts
        );
    }
    let store = Arc::new(clickhouse(config).await?);
    ensure_topics(&config.kafka)
        .await
        .context("creating the Kafka topics")?;
    let consumer = KafkaConsumer::new(
        &config.kafka,
        &config.aggregator.group,
        config.aggregator.instance_id.as_deref(),
    )?;
    let recoveries = consumer.stall_recoveries();
    let calls_member = consumer.membership();
    let dead = KafkaDeadLetters::new(&config.kafka)?;
    let settings = AggregatorConfig {
        max_batch: config.aggregator.max_batch,
        poll_wait: Duration::from_millis(config.aggregator.max_wait_ms),
        insert_timeout: Duration::from_millis(config.aggregator.insert_timeout_ms),
        parallel_inserts: config.aggregator.parallel_inserts,
    };
    let agg = Aggregator::new(
        Box::new(consumer),
        store.clone(),
        Box::new(dead),
        settings.clone(),
    );
    let stats = agg.stats();
    // Usage events (POST /v1/events) from their own topic, in a group of their own.
    let events_kafka = config.events_kafka()?;
    ensure_topics(&events_kafka)
        .await
        .context("creating the Kafka topic of usage events")?;
    let usage_group = format!("{}-usage", config.aggregator.group);
    let usage_consumer = KafkaConsumer::new(
        &events_kafka,
        &usage_group,
        config
            .aggregator
            .instance_id
            .as_deref()
            .map(|i| format!("{i}-usage"))
            .as_deref(),
    )?;
    let usage_member = usage_consumer.membership();
    let usage_agg = UsageAggregator::new(
        Box::new(usage_consumer),
        store,
        Box::new(KafkaDeadLetters::new(&config.kafka)?),
        settings,
    );
    let usage_stats = usage_agg.stats();
    let (stop_tx, stop_rx) = watch::channel(false);
    {
        let (st, ust) = (Arc::clone(&stats), Arc::clone(&usage_stats));
        let samples =
            move || -> Vec<Sample> { metrics::aggregator_samples(&st, &ust, read(&recoveries)) };
        let members = [
            (config.aggregator.group.clone(), Arc::clone(&calls_member)),
            (usage_group.clone(), Arc::clone(&usage_member)),
        ];
        let lag_members = members.clone();
        let exposition = move || {
            let rows: Vec<_> = lag_members
                .iter()
                .flat_map(|(group, m)| {
                    m.lag()
                        .into_iter()
                        .map(move |(t, p, l)| (group.clone(), t, p, l))
                })
                .collect();
            metrics::render(&samples()) + &metrics::consumer_lag(&rows)
        };
        // Ready once both consumers have joined their groups (an assignment, even of no
        // partition, when there are more aggregators than partitions).
        let readiness = metrics::ready_when(move || {
            members
                .iter()
                .map(|(group, m)| match m.partitions() {
                    Some(p) => {
                        let lag: i64 = m.lag().iter().map(|(_, _, l)| l).sum();
                        metrics::Check::new(
                            "consumer",
                            true,
                            format!("{group}: partitions {p:?}, lag {lag}"),
                        )
                    }
                    None => metrics::Check::new(
                        "consumer",
                        false,
                        format!("{group}: waiting for the group to assign partitions"),
                    ),
                })
                .collect()
        });
        ops.add(Arc::new(exposition), readiness);
    }
    let task = tokio::spawn(agg.run(stop_rx.clone()));
    let usage_task = tokio::spawn(usage_agg.run(stop_rx));
    tracing::info!(group = %config.aggregator.group, topic = %config.kafka.topic, "aggregator up");
    println!(
        "peage aggregator consuming {} as group {}",
        config.kafka.topic, config.aggregator.group
    );
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    task.await??;
    usage_task.await??;
    use std::sync::atomic::Ordering::Relaxed;
    tracing::info!(
        inserted = stats.inserted.load(Relaxed),
        duplicates = stats.duplicates.load(Relaxed),
        dead_lettered = stats.dead_lettered.load(Relaxed),
        "aggregator stopped"
    );
    Ok(())
}

/// `peage billing`: the control API on PostgreSQL (billing state) and ClickHouse (usage).
pub async fn billing(
    config: &PeageConfig,
    ops: &Ops,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let catalog = Arc::new(load_catalog(&config.catalog_path(), None)?);
    let store: Arc<dyn BillingStore> = Arc::new(postgres(config).await?);
    let secrets = config.secrets.secret_box()?;
    crate::secrets_cli::reseal(store.as_ref(), &secrets).await?;
    let usage = Arc::new(clickhouse(config).await?);
    // POST /v1/events: accepted events go to a spool of their own, forwarded to the usage
    // topic (docs/events.md).
    let events_kafka = config.events_kafka()?;
    ensure_topics(&events_kafka)
        .await
        .context("creating the Kafka topic of usage events")?;
    let events_spool = SpooledKafkaLog::start(
        &events_kafka,
        SpoolConfig {
            dir: config.events.spool_dir.clone(),
            // Synced on every append: an accepted event is on disk before the answer.
            sync_interval_ms: 0,
            ..config.spool.clone()
        },
    )
    .await
    .context("opening the spool of usage events")?;
    // The route's duplicate look-ups ask ClickHouse only for keys the usage topic carried.
    let known_keys = crate::usage_keys::TopicKeyFilter::start(&events_kafka, Arc::clone(&usage))
        .context("starting the usage key filter")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let node = crate::node::start_billing(
        config,
        crate::node::BillingParts {
            catalog,
            catalog_path: config.catalog_path(),
            demo_upstream: None,
            store,
            usage,
            admin_token: config.control.token()?,
            on_revoke: None,
            secrets,
            events: Arc::new(crate::events_sink::SpooledEvents(Arc::clone(&events_spool))),
            known_keys: Some(Arc::clone(&known_keys) as _),
            // Every gateway and billing instance follows the catalog of record from the store.
            instance: format!("{}:{}", config.control.listen, std::process::id()),
            adopt_catalog: true,
        },
        stop_rx,
    )
    .await?;
    let api = Arc::clone(&node.api);
    {
        let (ready_store, ready_spool) = (Arc::clone(&api.store), Arc::clone(&events_spool));
        let readiness: metrics::Readiness = Arc::new(move || {
            let (store, spool) = (Arc::clone(&ready_store), Arc::clone(&ready_spool));
            Box::pin(async move {
                vec![
                    metrics::store_check("postgres", store.catalog_in_force()).await,
                    metrics::Check::new(
                        "events spool",
                        spool.accepting(),
                        format!("{} usage events waiting for Kafka", spool.pending()),
                    ),
                ]
            })
        });
        let spool = Arc::clone(&events_spool);
        let api = Arc::clone(&api);
        let known_keys = Arc::clone(&known_keys);
        let exposition = move || {
            let mut samples = metrics::control_samples(&api);
            samples.push((
                "peage_events_spool_pending_events",
                "Usage events (POST /v1/events) in the spool not yet acknowledged by Kafka.",
                "gauge",
                spool.pending(),
            ));
            metrics::render(&samples)
                + &known_keys.exposition()
                + &metrics::catalog_info(&api.catalog().version)
        };
        ops.add(Arc::new(exposition), readiness);
    }
    let listener = tokio::net::TcpListener::bind(config.control.listen)
        .await
        .with_context(|| format!("control API cannot listen on {}", config.control.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(listen = %addr, "billing (control API) up");
    println!("peage billing (control API) listening on http://{addr}");
    // The dashboard's pages are served beside the control API they read.
    let served = peage_billing::serve_router(
        listener,
        api.router().merge(peage_dashboard::router()),
        shutdown,
    )
    .await;
    let _ = stop_tx.send(true);
    node.stopped().await;
    let left = events_spool.drain(Duration::from_secs(10)).await;
    if left > 0 {
        tracing::warn!(
            left,
            "usage events still spooled at shutdown; they are forwarded at the next start"
        );
    }
    served?;
    Ok(())
}

use chrono::NaiveDate;
use rust_decimal::Decimal;

use super::source::interpolate;
use super::*;
use crate::pricing::ChargeModel;

const GOOD: &str = r#"
[[api]]
name = "weather"

[[api.versions]]
id = "v1"
status = "deprecated"
deprecated = 2026-10-01
sunset = 2027-03-31
successor = "v2"
live = "https://weather-v1.internal"
sandbox = "https://weather-sandbox.internal"

[[api.versions]]
id = "v2"
live = "${WEATHER_URL}/"
operations = { "GET /forecast/{city}" = { units = 1 }, "POST /bulk" = { units = 10 } }

[[meter]]
name = "calls"
aggregation = "count"
filter = { status_class = ["2xx", "4xx"] }

[[meter]]
name = "egress_gb"
aggregation = "sum"
field = "response_bytes"
scale = "1e-9"
group_by = ["api"]

[[plan]]
id = "growth-2026"
currency = "EUR"
period = { every = "month", anchor_day = 1 }
base_fee = "49.00"
tax = { rate = "0.20", label = "VAT" }
minimum_commitment = "100.00"
charges = [
  { meter = "calls", model = "graduated", free = 10000, tiers = [
  { up_to = 100000, unit_price = "0.0010" }, { up_to = "inf", unit_price = "0.0006" } ] },
  { meter = "egress_gb", model = "per_unit", unit_price = "0.09" },
]
quotas = [{ meter = "calls", limit = 2000000, kind = "hard" }]
rate_limit = { per_second = 50, burst = 100 }
"#;

fn vars(name: &str) -> Option<String> {
    (name == "WEATHER_URL").then(|| "http://127.0.0.1:9999".to_string())
}

fn parse(text: &str) -> Result<Catalog, CatalogError> {
    Catalog::parse("catalog.toml", text, &vars)
}

fn only_issue(text: &str) -> CatalogIssue {
    let err = parse(text).unwrap_err();
    assert_eq!(err.issues.len(), 1, "{err}");
    err.issues[0].clone()
}

const TOKENS: &str = r#"
[[meter]]
name = "llm_tokens"
event_type = "com.example.llm.completion"
aggregation = "sum"
value = "usage.tokens"
filter = { region = ["eu", "us"] }
group_by = ["model"]
"#;

#[test]
fn meters_over_usage_events_read_data_properties() {
    let c = parse(&format!("{GOOD}{TOKENS}")).unwrap();
    let m = c.meter("llm_tokens").unwrap();
    let sel = m.events.as_ref().unwrap();
    assert_eq!(sel.event_type, "com.example.llm.completion");
    assert_eq!(sel.value.as_deref(), Some("usage.tokens"));
    assert_eq!(sel.group_by, ["model"]);
    assert!(sel.filter["region"].contains("eu"));
    assert!(!m.quotable() && !m.rollup_compatible());
    // The call type names the meters of call events, as leaving it out does.
    let calls = GOOD.replace(
        "name = \"calls\"\naggregation",
        "name = \"calls\"\nevent_type = \"peage.call.v1\"\naggregation",
    );
    assert!(parse(&calls)
        .unwrap()
        .meter("calls")
        .unwrap()
        .events
        .is_none());
}

#[test]
fn meters_over_usage_events_refuse_call_settings_a_missing_value_and_quotas() {
    let i = only_issue(&format!(
        "{GOOD}{}",
        TOKENS.replace(
            "value = \"usage.tokens\"",
            "value = \"usage.tokens\"\nfield = \"units\""
        )
    ));
    assert_eq!(i.field, "meter[llm_tokens].field");
    let i = only_issue(&format!(
        "{GOOD}{}",
        TOKENS.replace("value = \"usage.tokens\"\n", "")
    ));
    assert_eq!(i.field, "meter[llm_tokens].value");
    let i = only_issue(&format!(
        "{GOOD}{}",
        TOKENS.replace("usage.tokens", "usage..tokens")
    ));
    assert_eq!(i.field, "meter[llm_tokens].value");
    let quota = format!("{GOOD}{TOKENS}").replace(
        "quotas = [{ meter = \"calls\"",
        "quotas = [{ meter = \"llm_tokens\"",
    );
    let i = only_issue(&quota);
    assert!(i.message.contains("reads usage events"), "{}", i.message);
    let i = only_issue(&GOOD.replace(
        "filter = { status_class",
        "value = \"tokens\"\nfilter = { status_class",
    ));
    assert_eq!(i.field, "meter[calls].value");
}

#[test]
fn gauges_and_recurring_meters_read_usage_events_only() {
    let gauge = "\n[[meter]]\nname = \"storage\"\nevent_type = \"com.example.storage\"\naggregation = \"weighted_sum\"\nvalue = \"gb\"\n";
    let seats = "\n[[meter]]\nname = \"seats\"\nevent_type = \"com.example.seats\"\naggregation = \"unique_count\"\nvalue = \"user\"\nrecurring = true\n";
    let c = parse(&format!("{GOOD}{gauge}{seats}")).unwrap();
    let storage = c.meter("storage").unwrap();
    assert!(storage.carries_over() && !storage.events.as_ref().unwrap().recurring);
    assert!(c.meter("seats").unwrap().carries_over());
    assert!(!c.meter("calls").unwrap().carries_over());
    // Recurring is for latest and unique_count; a gauge always carries over.
    let i = only_issue(&format!("{GOOD}{}", seats.replace("unique_count", "sum")));
    assert_eq!(i.field, "meter[seats].recurring");
    let i = only_issue(&format!("{GOOD}{gauge}recurring = true\n"));
    assert_eq!(i.field, "meter[storage].recurring");
    assert!(i.message.contains("always carries"), "{}", i.message);
    // Over call events, neither exists.
    let err = parse(&GOOD.replace(
        "name = \"calls\"\naggregation = \"count\"",
        "name = \"calls\"\naggregation = \"weighted_sum\"",
    ))
    .unwrap_err();
    assert_eq!(err.issues[0].field, "meter[calls].aggregation", "{err}");
    let i = only_issue(&GOOD.replace(
        "name = \"calls\"\naggregation = \"count\"",
        "name = \"calls\"\naggregation = \"count\"\nrecurring = true",
    ));
    assert_eq!(i.field, "meter[calls].recurring");
}

#[test]
fn the_product_brief_example_loads() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.apis[0].versions[1].live, "http://127.0.0.1:9999");
    assert_eq!(
        c.apis[0].versions[0].sunset,
        NaiveDate::from_ymd_opt(2027, 3, 31)
    );
    let op = c
        .api_version("weather", "v2")
        .unwrap()
        .operation_for("GET", "/forecast/paris")
        .unwrap();
    assert_eq!(op.name, "GET /forecast/{city}");
    assert!(c
        .api_version("weather", "v2")
        .unwrap()
        .operation_for("GET", "/forecast/paris/x")
        .is_none());
    let plan = c.plan("growth-2026").unwrap();
    assert_eq!(plan.charges.len(), 2);
    assert_eq!(plan.charges[0].free, Decimal::from(10000));
    assert_eq!(
        c.meter("egress_gb").unwrap().scale,
        Some(Decimal::from_scientific("1e-9").unwrap())
    );
}

#[test]
fn any_change_gives_a_new_version() {
    let a = parse(GOOD).unwrap();
    let b = parse(&GOOD.replace("\"49.00\"", "\"59.00\"")).unwrap();
    assert_ne!(a.version, b.version);
    assert_ne!(a.plans[0].version, b.plans[0].version);
    assert_eq!(a.version, parse(GOOD).unwrap().version);
}

#[test]
fn unknown_meter_in_a_charge_names_file_line_and_field() {
    let i = only_issue(&GOOD.replace("{ meter = \"egress_gb\"", "{ meter = \"egress_tb\""));
    assert_eq!(i.file, "catalog.toml");
    assert_eq!(i.line, 41);
    assert_eq!(i.field, "plan[growth-2026].charges[1].meter");
    assert!(i.message.contains("egress_tb"), "{i}");
    assert!(i.to_string().starts_with("catalog.toml:41:"), "{i}");
}

#[test]
fn a_float_price_is_refused_with_its_field() {
    let i = only_issue(&GOOD.replace("unit_price = \"0.09\"", "unit_price = 0.09"));
    assert_eq!(i.line, 41);
    assert_eq!(i.field, "plan[growth-2026].charges[1].unit_price");
    assert!(i.message.contains("float"), "{i}");
}

#[test]
fn a_price_above_the_maximum_amount_is_refused_with_its_field() {
    let i = only_issue(&GOOD.replace(
        "unit_price = \"0.09\"",
        "unit_price = \"79228162514264337593543950335\"",
    ));
    assert_eq!(i.field, "plan[growth-2026].charges[1].unit_price");
    assert!(i.message.contains("at most"), "{i}");
    assert!(
        only_issue(&GOOD.replace("base_fee = \"49.00\"", "base_fee = \"1e16\""))
            .message
            .contains("10^15")
    );
}

#[test]
fn a_price_exact_arithmetic_cannot_keep_is_refused_never_rounded() {
    // 40 decimals would read as 0 and make the charge free.
    let forty = format!("0.{}9", "0".repeat(39));
    let i = only_issue(&GOOD.replace(
        "unit_price = \"0.09\"",
        &format!("unit_price = \"{forty}\""),
    ));
    assert_eq!(i.field, "plan[growth-2026].charges[1].unit_price");
    assert!(i.message.contains("exact decimal arithmetic"), "{i}");
    assert!(i.line > 0, "{i}");
    let i = only_issue(&GOOD.replace("base_fee = \"49.00\"", "base_fee = \"49e-30\""));
    assert!(i.message.contains("exact decimal arithmetic"), "{i}");
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let i = only_issue(&GOOD.replace("base_fee = \"49.00\"", "base_fees = \"49.00\""));
    assert_eq!(i.line, 35);
    assert_eq!(i.field, "base_fees");
    assert!(i.message.contains("unknown field"), "{i}");
}

#[test]
fn a_wrong_type_names_the_key() {
    let i = only_issue(&GOOD.replace("burst = 100", "burst = \"lots\""));
    assert_eq!(i.line, 44);
    assert_eq!(i.field, "burst");
}

#[test]
fn quotas_need_an_additive_meter_and_a_positive_limit() {
    let max_meter = GOOD.replace(
        "aggregation = \"sum\"\nfield = \"response_bytes\"",
        "aggregation = \"max\"\nfield = \"response_bytes\"",
    );
    let i = only_issue(&max_meter.replace(
        "quotas = [{ meter = \"calls\"",
        "quotas = [{ meter = \"egress_gb\"",
    ));
    assert_eq!(i.field, "plan[growth-2026].quotas[0].meter");
    assert!(i.message.contains("only count and sum"), "{i}");
    let i = only_issue(&GOOD.replace("limit = 2000000", "limit = 0"));
    assert_eq!(i.field, "plan[growth-2026].quotas[0].limit");
    let twice = GOOD.replace(
        "kind = \"hard\" }]",
        "kind = \"hard\" }, { meter = \"calls\", limit = 5, kind = \"soft\" }]",
    );
    assert!(only_issue(&twice)
        .message
        .contains("at most one quota per meter"));
    let i = only_issue(&GOOD.replace("per_second = 50", "per_second = 0"));
    assert_eq!(
        (i.line, i.field.as_str()),
        (44, "plan[growth-2026].rate_limit")
    );
}

#[test]
fn meters_may_count_refused_calls_but_quotas_may_not() {
    let only = GOOD.replace(
        "name = \"calls\"\naggregation = \"count\"",
        "name = \"calls\"\naggregation = \"count\"\nrefusals = \"only\"",
    );
    let i = only_issue(&only);
    assert_eq!(i.field, "plan[growth-2026].quotas[0].meter");
    assert!(i.message.contains("counts refused calls"), "{i}");
    let bad = GOOD.replace(
        "name = \"calls\"\naggregation = \"count\"",
        "name = \"calls\"\naggregation = \"count\"\nrefusals = \"sometimes\"",
    );
    let i = only_issue(&bad);
    assert_eq!(i.field, "meter[calls].refusals");
    let c = parse(GOOD).unwrap();
    assert_eq!(
        c.meter("calls").unwrap().refusals,
        crate::meter::Refusals::Exclude
    );
}

const PROTOCOLS: &str = r#"
[[api]]
name = "graph"
[[api.versions]]
id = "v1"
protocol = "graphql"
live = "http://127.0.0.1:1"
operations = { GetForecast = { units = 3 } }

[[api]]
name = "greet"
[[api.versions]]
id = "v1"
protocol = "grpc"
grpc_services = ["greet.v1.Greeter"]
live = "http://127.0.0.1:2"
operations = { "/greet.v1.Greeter/Chat" = { units = 2 } }
"#;

#[test]
fn graphql_and_grpc_versions_name_operations_their_own_way() {
    let c = parse(PROTOCOLS).unwrap();
    let g = c.api_version("graph", "v1").unwrap();
    assert_eq!(g.protocol, Protocol::Graphql);
    assert_eq!(
        g.operation_named("GetForecast").unwrap().units,
        Decimal::from(3)
    );
    let (api, v) = c.grpc_service("greet.v1.Greeter").unwrap();
    assert_eq!((api.name.as_str(), v.id.as_str()), ("greet", "v1"));
    assert_eq!(v.protocol, Protocol::Grpc);
    assert!(v.operation_named("/greet.v1.Greeter/Chat").is_some());
    assert!(c.grpc_service("greet.v1.Other").is_none());

    let i = only_issue(&PROTOCOLS.replace("GetForecast =", "\"GET /x\" ="));
    assert_eq!(i.field, "api[graph].versions[v1].operations[\"GET /x\"]");
    let i = only_issue(&PROTOCOLS.replace("\"/greet.v1.Greeter/Chat\"", "\"/other.Svc/Chat\""));
    assert!(
        i.message.contains("not in this version's grpc_services"),
        "{i}"
    );
    let i = only_issue(
        &PROTOCOLS
            .replace("grpc_services = [\"greet.v1.Greeter\"]\n", "")
            .replace(
                "operations = { \"/greet.v1.Greeter/Chat\" = { units = 2 } }",
                "",
            ),
    );
    assert_eq!(i.field, "api[greet].versions[v1].grpc_services");
    let i = only_issue(&PROTOCOLS.replace("protocol = \"graphql\"", "protocol = \"soap\""));
    assert!(i.message.contains("http, graphql, grpc"), "{i}");
    let twice = PROTOCOLS.replace(
        "[[api]]\nname = \"greet\"",
        "[[api]]\nname = \"greet\"\n[[api.versions]]\nid = \"v0\"\nprotocol = \"grpc\"\ngrpc_services = [\"greet.v1.Greeter\"]\nlive = \"http://127.0.0.1:3\"",
    );
    assert!(only_issue(&twice).message.contains("already served"));
}

#[test]
fn broken_toml_syntax_gives_a_position() {
    let i = only_issue("[[api]]\nname = \"x\nversions = []\n");
    assert_eq!(i.line, 2);
}

#[test]
fn tiers_must_increase_and_end_at_inf() {
    let i = only_issue(&GOOD.replace("up_to = \"inf\"", "up_to = 50000"));
    assert_eq!(i.field, "plan[growth-2026].charges[0].tiers[1].up_to");
    assert!(i.message.contains("previous"), "{i}");
}

#[test]
fn unset_variable_in_an_upstream_is_an_error() {
    let i = Catalog::parse("c.toml", GOOD, &|_| None)
        .unwrap_err()
        .issues[0]
        .clone();
    assert_eq!(i.field, "api[weather].versions[v2].live");
    assert!(i.message.contains("WEATHER_URL"), "{i}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let bad = GOOD
        .replace("currency = \"EUR\"", "currency = \"EUX\"")
        .replace("aggregation = \"count\"", "aggregation = \"total\"");
    let err = parse(&bad).unwrap_err();
    let fields: Vec<_> = err.issues.iter().map(|i| i.field.as_str()).collect();
    assert!(fields.contains(&"meter[calls].aggregation"), "{err}");
    assert!(fields.contains(&"plan[growth-2026].currency"), "{err}");
}

#[test]
fn deprecated_needs_its_dates_in_order() {
    let c = parse(GOOD).unwrap();
    assert_eq!(
        c.apis[0].versions[0].deprecated,
        NaiveDate::from_ymd_opt(2026, 10, 1)
    );
    let err = parse(&GOOD.replace("deprecated = 2026-10-01\n", "")).unwrap_err();
    assert!(
        err.issues
            .iter()
            .any(|i| i.field == "api[weather].versions[v1].deprecated"),
        "{err}"
    );
    let err =
        parse(&GOOD.replace("deprecated = 2026-10-01", "deprecated = 2027-04-01")).unwrap_err();
    assert!(err.to_string().contains("after its sunset"), "{err}");
}

#[test]
fn deprecated_needs_a_sunset_and_successor_must_exist() {
    let err = parse(
        &GOOD
            .replace("sunset = 2027-03-31\n", "")
            .replace("successor = \"v2\"", "successor = \"v3\""),
    )
    .unwrap_err();
    let fields: Vec<_> = err.issues.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "api[weather].versions[v1].sunset",
            "api[weather].versions[v1].successor"
        ],
        "{err}"
    );
}

#[test]
fn upstream_variables_may_carry_a_default() {
    let vars = |n: &str| (n == "SET").then(|| "http://set".to_string());
    assert_eq!(
        interpolate("${SET:-http://d}/x", &vars).unwrap(),
        "http://set/x"
    );
    assert_eq!(
        interpolate("${UNSET:-http://127.0.0.1:8081}", &vars).unwrap(),
        "http://127.0.0.1:8081"
    );
    assert!(interpolate("${UNSET}", &vars)
        .unwrap_err()
        .to_string()
        .contains("UNSET is not set"));
}

#[test]
fn a_diff_names_every_item_added_removed_or_changed_down_to_the_field() {
    let old = parse(GOOD).unwrap();
    assert!(diff(&old, &old).is_empty());
    let edited = GOOD
        .replace("unit_price = \"0.09\"", "unit_price = \"0.08\"")
        .replace("base_fee = \"49.00\"", "base_fee = \"59.00\"");
    let new = parse(&edited).unwrap();
    let d = diff(&old, &new);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(
        (d[0].section, d[0].name.as_str()),
        (Section::Plan, "growth-2026")
    );
    let ItemChange::Changed { fields } = &d[0].change else {
        panic!("{d:#?}")
    };
    let paths: Vec<&str> = fields.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["base_fee", "charges[1].unit_price"], "{fields:#?}");
    assert_eq!(fields[0].old, Some(serde_json::json!("49.00")));
    assert_eq!(fields[0].new, Some(serde_json::json!("59.00")));
    let shown = d[0].to_string();
    assert!(shown.contains("~ plan[growth-2026] changed"), "{shown}");
    assert!(
        shown.contains("charges[1].unit_price: \"0.09\" → \"0.08\""),
        "{shown}"
    );

    // Added and removed, in either direction.
    let empty = parse("").unwrap();
    let added = diff(&empty, &old);
    assert!(
        added.iter().all(|x| x.change == ItemChange::Added),
        "{added:#?}"
    );
    assert_eq!(
        added.len(),
        old.apis.len() + old.meters.len() + old.plans.len()
    );
    let removed = diff(&old, &empty);
    assert!(removed.iter().all(|x| x.change == ItemChange::Removed));
}

#[test]
fn shadow_modes_and_the_near_limit_fraction_load_and_are_checked() {
    let c = parse(
        &GOOD
            .replace(
                "kind = \"hard\" }]",
                "kind = \"hard\", shadow = true, near_limit = \"0.9\" }]",
            )
            .replace("burst = 100 }", "burst = 100, shadow = true }"),
    )
    .unwrap();
    let plan = c.plan("growth-2026").unwrap();
    assert!(plan.quotas[0].shadow && !plan.quotas[0].enforced());
    assert_eq!(plan.quotas[0].near_threshold(), Decimal::from(1_800_000));
    assert!(plan.rate_limit.as_ref().unwrap().shadow);
    // Left out of the plan's hash when off: plans written before shadow mode keep versions.
    let before = parse(GOOD).unwrap();
    let json = serde_json::to_string(before.plan("growth-2026").unwrap()).unwrap();
    assert!(
        !json.contains("shadow") && !json.contains("near_limit"),
        "{json}"
    );
    for bad in ["\"1.2\"", "0", "\"-0.5\""] {
        let i = only_issue(&GOOD.replace(
            "kind = \"hard\" }]",
            &format!("kind = \"hard\", near_limit = {bad} }}]"),
        ));
        assert_eq!(i.field, "plan[growth-2026].quotas[0].near_limit", "{bad}");
    }
}

#[test]
fn cors_policies_load_with_defaults_and_bad_ones_name_the_field() {
    let with = |cors: &str| {
        GOOD.replace(
            "sandbox = \"https://weather-sandbox.internal\"\n",
            &format!("sandbox = \"https://weather-sandbox.internal\"\ncors = {cors}\n"),
        )
    };
    let c = parse(&with("{ origins = [\"https://App.example.com\"] }")).unwrap();
    let p = c
        .api_version("weather", "v1")
        .unwrap()
        .cors
        .clone()
        .unwrap();
    assert_eq!(p.origins, ["https://app.example.com"]);
    assert!(
        p.methods.contains(&"GET".to_string()) && p.headers.contains(&"authorization".to_string())
    );
    assert_eq!((p.max_age, p.credentials), (600, false));
    assert!(c.api_version("weather", "v2").unwrap().cors.is_none());
    for (cors, field, says) in [
        ("{ origins = [] }", "origins", "names the origins"),
        (
            "{ origins = [\"https://app.example.com/\"] }",
            "origins",
            "no path",
        ),
        (
            "{ origins = [\"*\"], credentials = true }",
            "credentials",
            "cannot go with origin \"*\"",
        ),
        (
            "{ origins = [\"*\"], methods = [\"GE T\"] }",
            "methods",
            "not a valid",
        ),
        (
            "{ origins = [\"*\"], max_age = 100000 }",
            "max_age",
            "at most 86400",
        ),
    ] {
        let i = only_issue(&with(cors));
        assert_eq!(
            i.field,
            format!("api[weather].versions[v1].cors.{field}"),
            "{cors}"
        );
        assert!(i.message.contains(says), "{cors}: {i}");
    }
}

#[test]
fn tier_flat_fees_and_graduated_percentage_load_and_wrong_keys_are_named() {
    let c = parse(&GOOD.replace(
        "{ up_to = 100000, unit_price = \"0.0010\" }",
        "{ up_to = 100000, unit_price = \"0.0010\", flat_fee = \"25\" }",
    ))
    .unwrap();
    let ChargeModel::Graduated { tiers } = &c.plan("growth-2026").unwrap().charges[0].model else {
        panic!("graduated")
    };
    assert_eq!(tiers[0].flat_fee, Some(Decimal::from(25)));
    assert_eq!(tiers[1].flat_fee, None);
    let pct = |tiers: &str| {
        GOOD.replace(
            "{ meter = \"egress_gb\", model = \"per_unit\", unit_price = \"0.09\" },",
            &format!(
                "{{ meter = \"egress_gb\", model = \"graduated_percentage\", tiers = [{tiers}] }},"
            ),
        )
    };
    let c = parse(&pct(
        "{ up_to = 1000, rate = \"0.01\", flat_fee = \"200\" }, { up_to = \"inf\", rate = \"0.02\" }",
    ))
    .unwrap();
    let ChargeModel::GraduatedPercentage { tiers } =
        &c.plan("growth-2026").unwrap().charges[1].model
    else {
        panic!("graduated_percentage")
    };
    assert_eq!(
        (tiers[0].rate, tiers[0].flat_fee),
        (Decimal::new(1, 2), Some(Decimal::from(200)))
    );
    for (bad, field, says) in [
        (
            "{ up_to = \"inf\", rate = \"1.5\" }",
            "tiers[0].rate",
            "a rate is a fraction",
        ),
        (
            "{ up_to = \"inf\", unit_price = \"0.1\" }",
            "tiers[0].unit_price",
            "takes rate, not unit_price",
        ),
        ("{ up_to = \"inf\" }", "tiers[0].rate", "a tier needs rate"),
    ] {
        let i = only_issue(&pct(bad));
        assert_eq!(
            i.field,
            format!("plan[growth-2026].charges[1].{field}"),
            "{bad}"
        );
        assert!(i.message.contains(says), "{bad}: {i}");
    }
}

#[test]
fn a_dynamic_charge_needs_a_sum_meter() {
    let with = |meter: &str| {
        GOOD.replace(
            "{ meter = \"egress_gb\", model = \"per_unit\", unit_price = \"0.09\" },",
            &format!("{{ meter = \"{meter}\", model = \"dynamic\" }},"),
        )
    };
    let c = parse(&with("egress_gb")).unwrap();
    assert!(matches!(
        c.plan("growth-2026").unwrap().charges[1].model,
        ChargeModel::Dynamic {}
    ));
    let i = only_issue(&with("calls"));
    assert_eq!(i.field, "plan[growth-2026].charges[1].meter");
    assert!(i.message.contains("must be a sum"), "{i}");
}

#[test]
fn a_per_event_minimum_and_maximum_read_each_events_amount() {
    let with = |charge: &str| {
        GOOD.replace(
            "{ meter = \"egress_gb\", model = \"per_unit\", unit_price = \"0.09\" },",
            &format!("{charge},"),
        ) + "\n[[meter]]\nname = \"transfers\"\nevent_type = \"com.example.transfer\"\naggregation = \"sum\"\nvalue = \"amount\"\n"
    };
    let ok = "{ meter = \"transfers\", model = \"percentage\", rate = \"0.01\", fixed_fee = \"0.50\", min_per_event = \"1\", max_per_event = \"5\" }";
    let c = parse(&with(ok)).unwrap();
    let charge = &c.plan("growth-2026").unwrap().charges[1];
    assert!(charge.prices_each_event());
    for (charge, field, says) in [
        (
            ok.replace("\"1\"", "\"6\""),
            "min_per_event",
            "above the maximum",
        ),
        (
            ok.replace("max_per_event", "events_meter = \"calls\", max_per_event"),
            "events_meter",
            "not used",
        ),
        (ok.replace("\"1\"", "1.5"), "min_per_event", "float"),
    ] {
        let i = only_issue(&with(&charge));
        assert_eq!(
            i.field,
            format!("plan[growth-2026].charges[1].{field}"),
            "{charge}"
        );
        assert!(i.message.contains(says), "{charge}: {i}");
    }
}

#[test]
fn a_percentage_fee_per_event_needs_an_ungrouped_count_meter() {
    let with = |extra_meter: &str, charge: &str| {
        GOOD.replace(
            "{ meter = \"egress_gb\", model = \"per_unit\", unit_price = \"0.09\" },",
            &format!("{charge},"),
        ) + extra_meter
    };
    let count = "\n[[meter]]\nname = \"payments\"\naggregation = \"count\"\n";
    let ok = "{ meter = \"egress_gb\", model = \"percentage\", rate = \"0.029\", fixed_fee = \"0.30\", events_meter = \"payments\" }";
    // egress_gb is grouped by api: refused with a fee per event; without one it is fine.
    let i = only_issue(&with(count, ok));
    assert!(
        i.message.contains("egress_gb") && i.message.contains("grouped"),
        "{i}"
    );
    let rate_only = "{ meter = \"egress_gb\", model = \"percentage\", rate = \"0.029\" }";
    assert!(matches!(
        parse(&with("", rate_only))
            .unwrap()
            .plan("growth-2026")
            .unwrap()
            .charges[1]
            .model,
        ChargeModel::Percentage {
            fixed_fee: None,
            ..
        }
    ));
    for (charge, field, says) in [
        ("{ meter = \"calls\", model = \"percentage\", rate = \"0.029\", fixed_fee = \"0.30\" }", "events_meter", "fixed_fee needs events_meter"),
        ("{ meter = \"calls\", model = \"percentage\", rate = \"0.029\", fixed_fee = \"0.30\", events_meter = \"egress_gb\" }", "events_meter", "must be a count"),
        ("{ meter = \"calls\", model = \"percentage\", rate = \"2.9\" }", "rate", "a rate is a fraction"),
        ("{ meter = \"calls\", model = \"percentage\", rate = \"0.01\", free_events = 3 }", "fixed_fee", "free_events needs fixed_fee"),
        // A per-event minimum or maximum reads each event's amount: usage events only.
        ("{ meter = \"calls\", model = \"percentage\", rate = \"0.01\", min_per_event = \"1\" }", "meter", "ungrouped sum over usage events"),
    ] {
        let i = only_issue(&with(count, charge));
        assert_eq!(i.field, format!("plan[growth-2026].charges[1].{field}"), "{charge}");
        assert!(i.message.contains(says), "{charge}: {i}");
    }
}

#[test]
fn plans_grant_apis_versions_and_operations_and_list_features() {
    use crate::pricing::Granted;
    let with =
        |extra: &str| format!("{GOOD}\n[[plan]]\nid = \"starter\"\ncurrency = \"EUR\"\n{extra}\n");
    let c = parse(&with(
        "apis = [{ api = \"weather\", versions = [\"v2\"], operations = [\"GET /forecast/{city}\"] }]\n\
         features = [\"sso\", \"priority_support\"]",
    ))
    .unwrap();
    let starter = c.plan("starter").unwrap();
    assert_eq!(starter.features, ["sso", "priority_support"]);
    assert_eq!(starter.granted("weather", "v1"), Granted::No);
    assert_eq!(
        starter.granted("weather", "v2"),
        Granted::Operations(&["GET /forecast/{city}".to_string()])
    );
    assert_eq!(starter.granted("maps", "v1"), Granted::No);
    // A plan that says nothing grants everything, and keeps the version it had.
    let growth = c.plan("growth-2026").unwrap();
    assert_eq!(growth.granted("weather", "v1"), Granted::All);
    assert_eq!(
        growth.version,
        parse(GOOD).unwrap().plan("growth-2026").unwrap().version
    );
    let all = parse(&with("apis = [{ api = \"weather\" }]")).unwrap();
    assert_eq!(
        all.plan("starter").unwrap().granted("weather", "v1"),
        Granted::All
    );
    let none = parse(&with("apis = []")).unwrap();
    assert_eq!(
        none.plan("starter").unwrap().granted("weather", "v2"),
        Granted::No
    );

    for (extra, says) in [
        (
            "apis = [{ api = \"maps\" }]",
            "no API \"maps\" in the catalog (its APIs: weather)",
        ),
        (
            "apis = [{ api = \"weather\", versions = [\"v9\"] }]",
            "weather has no version \"v9\"",
        ),
        (
            "apis = [{ api = \"weather\", versions = [\"v2\"], operations = [\"GET /nowhere\"] }]",
            "\"GET /nowhere\" is not an operation of the versions granted",
        ),
        (
            "apis = [{ api = \"weather\" }, { api = \"weather\", versions = [\"v1\"] }]",
            "\"weather\" is granted twice",
        ),
        ("features = [\"SSO\"]", "a feature is 1 to 64 lowercase"),
        ("features = [\"sso\", \"sso\"]", "\"sso\" is listed twice"),
    ] {
        let issue = only_issue(&with(extra));
        assert!(issue.message.contains(says), "{extra}: {issue}");
    }
}

//! GraphQL calls are metered per operation: the request's document is parsed with a real
//! GraphQL parser (graphql-parser), the operation chosen as a GraphQL server would choose it
//! (`operationName`, or the document's only operation), and its root fields recorded.

use std::collections::BTreeSet;

use graphql_parser::query::{
    parse_query, Definition, Document, FragmentDefinition, OperationDefinition, Selection,
    SelectionSet,
};
use serde::Deserialize;

/// What the event records of a GraphQL call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GraphqlCall {
    /// The operation name, or `anonymous` for an unnamed one.
    pub operation: String,
    /// `query`, `mutation` or `subscription`.
    pub kind: &'static str,
    /// The operation's root fields (names, not aliases), sorted, through fragments.
    pub root_fields: Vec<String>,
}

pub(crate) const ANONYMOUS: &str = "anonymous";

/// The GraphQL-over-HTTP request parameters the gateway reads.
#[derive(Deserialize)]
struct Params {
    query: Option<String>,
    #[serde(rename = "operationName")]
    operation_name: Option<String>,
}

/// Why a GraphQL request cannot be metered (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GraphqlError {
    #[error("the query string is not GraphQL-over-HTTP parameters: {0}")]
    QueryString(String),
    #[error("the GraphQL document is not UTF-8")]
    NotUtf8,
    #[error("batched GraphQL requests are not accepted; send one operation per request")]
    Batched,
    #[error("the body is not a GraphQL request ({{\"query\": …}}): {0}")]
    Body(String),
    #[error("the request has no GraphQL `query`")]
    NoQuery,
    #[error("the GraphQL document does not parse: {0}")]
    Parse(String),
    #[error("the document has no operation named {0:?}")]
    NoSuchOperation(String),
    #[error("the GraphQL document has no operation")]
    NoOperation,
    #[error("the document has several operations; name one with operationName")]
    SeveralOperations,
}

/// Reads the operation of a GraphQL request: a JSON body (`{"query", "operationName"}`), an
/// `application/graphql` body, or the `query` and `operationName` of a GET's query string.
/// The error says why the request cannot be metered, for a 400.
pub(crate) fn read(
    method: &http::Method,
    content_type: Option<&str>,
    query_string: Option<&str>,
    body: &[u8],
) -> Result<GraphqlCall, GraphqlError> {
    let params = if method == http::Method::GET {
        serde_urlencoded::from_str::<Params>(query_string.unwrap_or(""))
            .map_err(|e| GraphqlError::QueryString(e.to_string()))?
    } else if content_type.is_some_and(|c| c.starts_with("application/graphql")) {
        Params {
            query: Some(
                std::str::from_utf8(body)
                    .map_err(|_| GraphqlError::NotUtf8)?
                    .to_string(),
            ),
            operation_name: None,
        }
    } else {
        let body = body.trim_ascii_start();
        if body.first() == Some(&b'[') {
            return Err(GraphqlError::Batched);
        }
        serde_json::from_slice::<Params>(body).map_err(|e| GraphqlError::Body(e.to_string()))?
    };
    let query = params
        .query
        .filter(|q| !q.trim().is_empty())
        .ok_or(GraphqlError::NoQuery)?;
    operation(&query, params.operation_name.as_deref())
}

/// Parses `query` and picks the operation named `wanted`, or the only one.
pub(crate) fn operation(query: &str, wanted: Option<&str>) -> Result<GraphqlCall, GraphqlError> {
    let doc: Document<&str> = parse_query(query).map_err(|e| GraphqlError::Parse(e.to_string()))?;
    let mut ops: Vec<&OperationDefinition<&str>> = Vec::new();
    let mut fragments: Vec<&FragmentDefinition<&str>> = Vec::new();
    for d in &doc.definitions {
        match d {
            Definition::Operation(op) => ops.push(op),
            Definition::Fragment(f) => fragments.push(f),
        }
    }
    let op = match wanted.filter(|w| !w.is_empty()) {
        Some(w) => ops
            .iter()
            .find(|op| name_of(op).as_deref() == Some(w))
            .ok_or_else(|| GraphqlError::NoSuchOperation(w.to_string()))?,
        None => match ops.as_slice() {
            [only] => only,
            [] => return Err(GraphqlError::NoOperation),
            _ => return Err(GraphqlError::SeveralOperations),
        },
    };
    let (kind, selection) = match op {
        OperationDefinition::SelectionSet(s) => ("query", s),
        OperationDefinition::Query(q) => ("query", &q.selection_set),
        OperationDefinition::Mutation(m) => ("mutation", &m.selection_set),
        OperationDefinition::Subscription(s) => ("subscription", &s.selection_set),
    };
    let mut fields = BTreeSet::new();
    let mut visited = BTreeSet::new();
    root_fields(selection, &fragments, &mut visited, &mut fields);
    Ok(GraphqlCall {
        operation: name_of(op).unwrap_or_else(|| ANONYMOUS.into()),
        kind,
        root_fields: fields.into_iter().collect(),
    })
}

fn name_of<'a>(op: &OperationDefinition<'a, &'a str>) -> Option<String> {
    match op {
        OperationDefinition::SelectionSet(_) => None,
        OperationDefinition::Query(q) => q.name.map(str::to_string),
        OperationDefinition::Mutation(m) => m.name.map(str::to_string),
        OperationDefinition::Subscription(s) => s.name.map(str::to_string),
    }
}

/// The fields selected at the root, following inline fragments and fragment spreads (each
/// fragment once, so a cyclic document cannot loop).
fn root_fields<'a>(
    set: &SelectionSet<'a, &'a str>,
    fragments: &[&FragmentDefinition<'a, &'a str>],
    visited: &mut BTreeSet<&'a str>,
    out: &mut BTreeSet<String>,
) {
    for item in &set.items {
        match item {
            Selection::Field(f) if f.name != "__typename" => {
                out.insert(f.name.to_string());
            }
            Selection::Field(_) => {}
            Selection::InlineFragment(i) => root_fields(&i.selection_set, fragments, visited, out),
            Selection::FragmentSpread(s) => {
                if !visited.insert(s.fragment_name) {
                    continue;
                }
                if let Some(f) = fragments.iter().find(|f| f.name == s.fragment_name) {
                    root_fields(&f.selection_set, fragments, visited, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The call, or the error's text.
    fn post(body: &str) -> Result<GraphqlCall, String> {
        read(
            &http::Method::POST,
            Some("application/json"),
            None,
            body.as_bytes(),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn the_named_operation_and_its_root_fields() {
        let call = post(
            r#"{"query": "query A { a: forecast(city: \"Paris\") { temp } } mutation B { book { id } }",
                "operationName": "A", "variables": {}}"#,
        )
        .unwrap();
        assert_eq!(
            call,
            GraphqlCall {
                operation: "A".into(),
                kind: "query",
                root_fields: vec!["forecast".into()],
            }
        );
        let b =
            post(r#"{"query": "query A { x } mutation B { book { id } }", "operationName": "B"}"#)
                .unwrap();
        assert_eq!((b.operation.as_str(), b.kind), ("B", "mutation"));
    }

    #[test]
    fn root_fields_follow_fragments_without_looping() {
        let q = "query Q { __typename ...F ... on Query { city } weather }
                 fragment F on Query { forecast ...G }
                 fragment G on Query { alerts ...F }";
        let call = operation(q, None).unwrap();
        assert_eq!(call.root_fields, ["alerts", "city", "forecast", "weather"]);
    }

    #[test]
    fn an_unnamed_query_is_anonymous_and_a_get_is_read_from_the_query_string() {
        assert_eq!(
            operation("{ forecast { temp } }", None).unwrap().operation,
            ANONYMOUS
        );
        let get = read(
            &http::Method::GET,
            None,
            Some("query=query%20Forecast%20%7B%20forecast%20%7D&operationName=Forecast"),
            b"",
        )
        .unwrap();
        assert_eq!(get.operation, "Forecast");
        let raw = read(
            &http::Method::POST,
            Some("application/graphql"),
            None,
            b"subscription Ticks { tick }",
        )
        .unwrap();
        assert_eq!(
            (raw.operation.as_str(), raw.kind),
            ("Ticks", "subscription")
        );
    }

    #[test]
    fn what_cannot_be_metered_is_refused_with_a_reason() {
        for (body, why) in [
            (r#"{"query": "query A { x"}"#, "does not parse"),
            (
                r#"{"query": "query A { x } query B { y }"}"#,
                "several operations",
            ),
            (
                r#"{"query": "query A { x }", "operationName": "C"}"#,
                "no operation named",
            ),
            (r#"{"query": "fragment F on Q { x }"}"#, "no operation"),
            (r#"{"variables": {}}"#, "no GraphQL `query`"),
            (r#"[{"query": "{ x }"}]"#, "batched"),
            ("not json", "not a GraphQL request"),
        ] {
            let e = post(body).unwrap_err();
            assert!(e.contains(why), "{body}: {e}");
        }
    }

    #[test]
    fn a_regex_would_be_fooled_by_strings_and_comments_the_parser_is_not() {
        let q = "# query Fake { x }\nquery Real { search(text: \"mutation Evil { y }\") { id } }";
        let call = operation(q, None).unwrap();
        assert_eq!((call.operation.as_str(), call.kind), ("Real", "query"));
        assert_eq!(call.root_fields, ["search"]);
    }
}

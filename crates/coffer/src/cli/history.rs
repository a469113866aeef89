//! `coffer history secret NAME`: a Secret's kept versions, newest first.

use std::process::ExitCode;

use super::args::{DEFAULT_NAMESPACE, HistoryArgs, one_name};
use super::client::ServerAddr;
use super::error::CliError;
use super::printer::{Out, human_duration, now_secs, tabulate};
use coffer_server::proto::v1 as pb;

pub(super) async fn run(server: &ServerAddr, args: HistoryArgs) -> Result<ExitCode, CliError> {
    let name = one_name(&args.resource, args.name.as_ref())?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    let mut client = server.connect().await?;
    let page = client
        .history(pb::HistoryRequest {
            namespace,
            name: name.clone(),
            limit: args.limit,
        })
        .await
        .map_err(|s| CliError::status(&server.display, &s, Some(&name)))?
        .into_inner();
    let _ = Out::new().print(&table(&page, now_secs(), args.no_headers));
    Ok(ExitCode::SUCCESS)
}

/// The table: REVISION, AGE (since the version was written), CHANGE, DATA-KEYS (names only,
/// never values; for a delete, the keys it removed).
fn table(page: &pb::HistoryResponse, now: i64, no_headers: bool) -> String {
    let mut rows = Vec::with_capacity(page.versions.len() + 1);
    if !no_headers {
        rows.push(
            ["REVISION", "AGE", "CHANGE", "DATA-KEYS"]
                .map(str::to_owned)
                .to_vec(),
        );
    }
    for v in &page.versions {
        let age = v.written_at.as_ref().map_or_else(
            || "<unknown>".to_owned(),
            |t| human_duration(now - t.seconds),
        );
        let change = if v.deleted {
            "deleted"
        } else if v.created {
            "created"
        } else {
            "updated"
        };
        let mut keys: Vec<&str> = v
            .secret
            .as_ref()
            .map(|s| s.data.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        let keys = if keys.is_empty() {
            "<none>".to_owned()
        } else {
            keys.join(",")
        };
        rows.push(vec![v.revision.to_string(), age, change.to_owned(), keys]);
    }
    tabulate(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(
        revision: u64,
        deleted: bool,
        created: bool,
        keys: &[&str],
        at: i64,
    ) -> pb::SecretVersion {
        pb::SecretVersion {
            revision,
            deleted,
            created,
            secret: Some(pb::Secret {
                data: keys
                    .iter()
                    .map(|k| ((*k).to_owned(), b"v".to_vec()))
                    .collect(),
                ..pb::Secret::default()
            }),
            written_at: (at > 0).then_some(prost_types::Timestamp {
                seconds: at,
                nanos: 0,
            }),
        }
    }

    #[test]
    fn the_table_names_each_change_and_its_keys_never_values() {
        let page = pb::HistoryResponse {
            versions: vec![
                version(9, true, false, &["b", "a"], 1000),
                version(7, false, false, &["a", "b"], 940),
                version(3, false, true, &[], 0),
            ],
            compact_revision: 0,
        };
        let text = table(&page, 1000, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["REVISION", "AGE", "CHANGE", "DATA-KEYS"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["9", "0s", "deleted", "a,b"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["7", "60s", "updated", "a,b"]
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["3", "<unknown>", "created", "<none>"]
        );
        assert!(!text.contains('v'), "no value is printed");
        assert_eq!(table(&page, 1000, true).lines().count(), 3);
    }
}

//! `coffer get secret[s]` and `coffer get secrets -w`.

use std::process::ExitCode;

use super::args::{DEFAULT_NAMESPACE, GetArgs, parse_resource};
use super::client::ServerAddr;
use super::convert;
use super::error::CliError;
use super::printer::{
    Columns, Out, OutputFormat, now_secs, render_one, tabulate, tabulate_keeping,
};
use crate::credentials::Client;
use coffer_core::model::{Secret, manifest};
use coffer_server::proto::v1 as pb;

pub(super) async fn run(server: &ServerAddr, args: GetArgs) -> Result<ExitCode, CliError> {
    let mut names = Vec::new();
    if let Some(n) = parse_resource(&args.resource)? {
        names.push(n);
    }
    names.extend(args.names.iter().cloned());
    if args.all_namespaces && !names.is_empty() {
        return Err(CliError::msg(
            "a resource cannot be retrieved by name across all namespaces",
        ));
    }
    if !names.is_empty() && (args.selector.is_some() || args.field_selector.is_some()) {
        return Err(CliError::msg(
            "when retrieving Secrets by name, --selector and --field-selector are not allowed",
        ));
    }
    let namespace = if args.all_namespaces {
        String::new()
    } else {
        args.namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
    };
    let format = args.output.clone().unwrap_or(OutputFormat::Table);
    let columns = Columns {
        namespace: args.all_namespaces,
        labels: args.show_labels,
        event: false,
    };
    let revision = args.revision.unwrap_or(0);
    let mut client = server.connect().await?;
    let mut out = Out::new();

    if args.watch || args.watch_only {
        return watch(
            server,
            &mut client,
            &args,
            names,
            namespace,
            format,
            columns,
            &mut out,
        )
        .await;
    }

    if names.is_empty() {
        let items = list_all(
            server,
            &mut client,
            &namespace,
            args.selector.as_deref().unwrap_or(""),
            args.field_selector.as_deref().unwrap_or(""),
            args.chunk_size,
            revision,
        )
        .await?
        .0;
        if items.is_empty()
            && matches!(
                format,
                OutputFormat::Table | OutputFormat::Wide | OutputFormat::Name
            )
        {
            if namespace.is_empty() {
                eprintln!("No resources found");
            } else {
                eprintln!("No resources found in {namespace} namespace.");
            }
            return Ok(ExitCode::SUCCESS);
        }
        let _ = out.print(&render_many(&format, &items, columns, args.no_headers));
        return Ok(ExitCode::SUCCESS);
    }

    // By name: print what was found, then an error line for each that was not.
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for name in &names {
        match client
            .get(pb::GetSecretRequest {
                namespace: namespace.clone(),
                name: name.clone(),
                resource_version: revision,
            })
            .await
        {
            Ok(r) => found.push(convert::from_proto(r.into_inner())),
            Err(s) if s.code() == tonic::Code::NotFound => {
                errors.push(CliError::status(&server.display, &s, None));
            }
            Err(s) => return Err(CliError::status(&server.display, &s, None)),
        }
    }
    let text = if names.len() == 1 && !matches!(format, OutputFormat::Table | OutputFormat::Wide) {
        found.first().map(|s| render_one(&format, s))
    } else if found.is_empty() {
        None
    } else {
        Some(render_many(&format, &found, columns, args.no_headers))
    };
    if let Some(text) = text {
        let _ = out.print(&text);
    }
    if errors.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for e in &errors {
        eprintln!("{e}");
    }
    Ok(ExitCode::from(1))
}

/// Renders a collection: a table, a `kind: List`, names, or a template over the List.
fn render_many(
    format: &OutputFormat,
    items: &[Secret],
    columns: Columns,
    no_headers: bool,
) -> zeroize::Zeroizing<String> {
    match format {
        OutputFormat::Table | OutputFormat::Wide => {
            let now = now_secs();
            let mut rows = Vec::with_capacity(items.len() + 1);
            if !no_headers {
                rows.push(columns.header());
            }
            rows.extend(items.iter().map(|s| columns.row(s, now, None)));
            tabulate(&rows).into()
        }
        OutputFormat::Yaml => manifest::list_to_yaml(items),
        OutputFormat::Json => manifest::list_to_json(items),
        OutputFormat::Name => items
            .iter()
            .map(|s| format!("secret/{}\n", s.metadata.name))
            .collect::<String>()
            .into(),
        OutputFormat::JsonPath(t) => t.render(&manifest::list_to_value(items)).into(),
    }
}

/// Lists every page (at `revision`, 0: the latest); returns the items and the list's revision.
pub(super) async fn list_all(
    server: &ServerAddr,
    client: &mut Client,
    namespace: &str,
    label_selector: &str,
    field_selector: &str,
    chunk_size: u32,
    revision: u64,
) -> Result<(Vec<Secret>, u64), CliError> {
    let mut items = Vec::new();
    let mut continue_token = String::new();
    loop {
        let page = client
            .list(pb::ListSecretsRequest {
                namespace: namespace.to_owned(),
                label_selector: label_selector.to_owned(),
                field_selector: field_selector.to_owned(),
                limit: chunk_size,
                continue_token: std::mem::take(&mut continue_token),
                resource_version: revision,
            })
            .await
            .map_err(|s| CliError::status(&server.display, &s, None))?
            .into_inner();
        items.extend(page.items.into_iter().map(convert::from_proto));
        if page.continue_token.is_empty() {
            return Ok((items, page.resource_version));
        }
        continue_token = page.continue_token;
    }
}

#[allow(clippy::too_many_arguments)]
async fn watch(
    server: &ServerAddr,
    client: &mut Client,
    args: &GetArgs,
    names: Vec<String>,
    namespace: String,
    format: OutputFormat,
    mut columns: Columns,
    out: &mut Out,
) -> Result<ExitCode, CliError> {
    if names.len() > 1 {
        return Err(CliError::msg(format_args!(
            "watch is only supported on individual resources and resource collections, but {} resources were found",
            names.len()
        )));
    }
    let label_selector = args.selector.clone().unwrap_or_default();
    let mut field_selector = args.field_selector.clone().unwrap_or_default();
    if let Some(name) = names.first() {
        field_selector = format!("metadata.name={name}");
    }
    columns.event = args.output_watch_events;
    let mut printer = WatchPrinter {
        format,
        columns,
        header_done: args.no_headers,
        events: args.output_watch_events,
        // The EVENT column is as wide as its longest value from the start, so it stays aligned.
        widths: if args.output_watch_events {
            vec!["MODIFIED".len() + 3]
        } else {
            Vec::new()
        },
    };

    let mut revision = 0;
    if !args.watch_only {
        let (items, rv) = list_all(
            server,
            client,
            &namespace,
            &label_selector,
            &field_selector,
            args.chunk_size,
            0,
        )
        .await?;
        revision = rv;
        if printer.print_initial(&items, out).is_err() {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let mut stream = client
        .watch(pb::WatchSecretsRequest {
            namespace,
            label_selector,
            field_selector,
            resource_version: revision,
            send_initial_events: false,
            allow_bookmarks: false,
        })
        .await
        .map_err(|s| CliError::status(&server.display, &s, None))?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(ev)) => {
                let kind = match pb::watch_event::Type::try_from(ev.r#type) {
                    Ok(pb::watch_event::Type::Added) => "ADDED",
                    Ok(pb::watch_event::Type::Modified) => "MODIFIED",
                    Ok(pb::watch_event::Type::Deleted) => "DELETED",
                    _ => continue,
                };
                let Some(object) = ev.object else { continue };
                let secret = convert::from_proto(object);
                if printer.print_event(kind, &secret, out).is_err() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            // The server ended the watch (for instance on shutdown): done, as kubectl.
            Ok(None) => return Ok(ExitCode::SUCCESS),
            Err(s) => return Err(CliError::status(&server.display, &s, None)),
        }
    }
}

/// Prints watch output: table rows (one line per event, aligned with what was printed before
/// while it fits), or objects.
struct WatchPrinter {
    format: OutputFormat,
    columns: Columns,
    header_done: bool,
    events: bool,
    /// The table's column widths so far.
    widths: Vec<usize>,
}

impl WatchPrinter {
    fn print_initial(
        &mut self,
        items: &[Secret],
        out: &mut Out,
    ) -> Result<(), super::printer::Closed> {
        if matches!(self.format, OutputFormat::Table | OutputFormat::Wide) {
            if items.is_empty() {
                return Ok(());
            }
            let now = now_secs();
            let mut rows = Vec::new();
            if !self.header_done {
                rows.push(self.columns.header());
                self.header_done = true;
            }
            let event = self.events.then_some("ADDED");
            rows.extend(items.iter().map(|s| self.columns.row(s, now, event)));
            return out.print(&tabulate_keeping(&rows, &mut self.widths));
        }
        for s in items {
            self.print_event("ADDED", s, out)?;
        }
        Ok(())
    }

    fn print_event(
        &mut self,
        kind: &str,
        s: &Secret,
        out: &mut Out,
    ) -> Result<(), super::printer::Closed> {
        match &self.format {
            OutputFormat::Table | OutputFormat::Wide => {
                let mut rows = Vec::new();
                if !self.header_done {
                    rows.push(self.columns.header());
                    self.header_done = true;
                }
                rows.push(self.columns.row(s, now_secs(), Some(kind)));
                out.print(&tabulate_keeping(&rows, &mut self.widths))
            }
            OutputFormat::Name => {
                if self.events {
                    out.print(&format!("{kind} secret/{}\n", s.metadata.name))
                } else {
                    out.print(&format!("secret/{}\n", s.metadata.name))
                }
            }
            OutputFormat::Yaml => {
                let body = manifest::to_yaml(s);
                if self.events {
                    let indented: String = body.lines().map(|l| format!("  {l}\n")).collect();
                    let indented = zeroize::Zeroizing::new(indented);
                    out.print(&format!(
                        "object:\n{}type: {kind}\n---\n",
                        indented.as_str()
                    ))
                } else {
                    out.print(&format!("{}---\n", body.as_str()))
                }
            }
            OutputFormat::Json => {
                let body = manifest::to_json(s);
                if self.events {
                    let v = serde_json::json!({"type": kind, "object": manifest::to_value(s)});
                    let text = zeroize::Zeroizing::new(v.to_string());
                    out.print(&format!("{}\n", text.as_str()))
                } else {
                    out.print(&body)
                }
            }
            OutputFormat::JsonPath(t) => out.print(&t.render(&manifest::to_value(s))),
        }
    }
}

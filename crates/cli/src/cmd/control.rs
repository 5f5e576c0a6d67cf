//! `pmesh send`, `pmesh nodes`, `pmesh topology`, `pmesh events`: commands against a running
//! node's local control endpoint (see `pmesh_net::control` for the protocol).

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context as _;
use pmesh_net::control::{ControlAddr, ControlClient};
use serde_json::{Value, json};

/// Where the running node's control endpoint is.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// Control endpoint of the running node: a socket path, `unix:PATH` or `127.0.0.1:PORT`
    /// [default: $PMESH_CONTROL, else $XDG_RUNTIME_DIR/pmesh/node.sock].
    #[arg(long, value_name = "ADDR")]
    pub control: Option<String>,
}

impl ControlArgs {
    /// The endpoint: `--control`, else `$PMESH_CONTROL`, else the default path.
    pub fn addr(&self) -> anyhow::Result<ControlAddr> {
        match self.control.clone().or_else(|| {
            std::env::var("PMESH_CONTROL")
                .ok()
                .filter(|s| !s.is_empty())
        }) {
            Some(a) => a.parse().map_err(anyhow::Error::msg).context("--control"),
            None => Ok(ControlAddr::default_path()),
        }
    }
}

/// Arguments of `pmesh send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// Send a SINGLE message to this node id.
    #[arg(
        long,
        value_name = "ID",
        required_unless_present = "broadcast",
        conflicts_with = "broadcast"
    )]
    to: Option<u32>,
    /// Send a BROADCAST to every node.
    #[arg(long)]
    broadcast: bool,
    /// The message; `-` reads it from standard input.
    #[arg(value_name = "MESSAGE")]
    message: String,
}

/// Arguments of `pmesh nodes`.
#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `pmesh topology`.
#[derive(Debug, clap::Args)]
pub struct TopologyArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// Print the tree as JSON (painlessMesh's `subConnectionJson`) instead of an indented tree.
    #[arg(long)]
    json: bool,
}

/// Arguments of `pmesh events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// Only events of this kind (`received`, `package`, `new_connection`, `dropped_connection`,
    /// `changed_connections`, `time_adjusted`, `delay`, `frame_dropped`, `link_up`, `link_down`, `plugin`,
    /// `lagged`); repeatable.
    #[arg(long, value_name = "KIND")]
    kind: Vec<String>,
}

/// `pmesh events`: the running node's events, one JSON object per line, until Ctrl-C.
pub fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let addr = args.control.addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut client = ControlClient::connect(&addr).await?;
        client.stream("events", json!({})).await?;
        let mut out = std::io::stdout().lock();
        loop {
            let item = tokio::select! {
                i = client.next_item() => i?,
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            };
            let Some(item) = item else {
                anyhow::bail!("the node closed the event stream");
            };
            let kind = item.get("kind").and_then(Value::as_str).unwrap_or("");
            if kind == "subscribed"
                || (!args.kind.is_empty() && !args.kind.iter().any(|k| k == kind))
            {
                continue;
            }
            if writeln!(out, "{item}").and_then(|()| out.flush()).is_err() {
                // The reader went away (`| head`): done.
                return Ok(ExitCode::SUCCESS);
            }
        }
    })
}

fn request(control: &ControlArgs, cmd: &str, params: Value) -> anyhow::Result<Value> {
    let addr = control.addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut client = ControlClient::connect(&addr).await?;
        client.request(cmd, params).await
    })
    .map_err(anyhow::Error::from)
}

/// `pmesh send`.
pub fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    let msg = if args.message == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the message from stdin")?;
        s.strip_suffix('\n').map(str::to_owned).unwrap_or(s)
    } else {
        args.message
    };
    let params = match args.to {
        Some(to) => json!({"to": to, "msg": msg}),
        None => json!({"broadcast": true, "msg": msg}),
    };
    request(&args.control, "send", params)?;
    match args.to {
        Some(to) => eprintln!("sent to {to}"),
        None => eprintln!("broadcast sent"),
    }
    Ok(ExitCode::SUCCESS)
}

/// One node of the tree as `pmesh nodes` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// Its id.
    pub id: u32,
    /// Hops from the node asked.
    pub hops: u32,
    /// The neighbour it is reached through.
    pub via: u32,
    /// Announces root.
    pub root: bool,
}

/// Walks a `subConnectionJson` tree: every node but the top, pre-order, with hops and the
/// neighbour it is reached through.
pub fn rows(tree: &Value) -> Vec<NodeRow> {
    fn walk(t: &Value, hops: u32, via: u32, out: &mut Vec<NodeRow>) {
        for sub in t
            .get("subs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id = sub.get("nodeId").and_then(Value::as_u64).unwrap_or(0) as u32;
            let via = if hops == 0 { id } else { via };
            let root = sub.get("root").and_then(Value::as_bool).unwrap_or(false);
            out.push(NodeRow {
                id,
                hops: hops + 1,
                via,
                root,
            });
            walk(sub, hops + 1, via, out);
        }
    }
    let mut out = Vec::new();
    walk(tree, 0, 0, &mut out);
    out
}

/// `pmesh nodes`.
pub fn nodes(args: NodesArgs) -> anyhow::Result<ExitCode> {
    let data = request(&args.control, "nodes", Value::Null)?;
    let me = data.get("node_id").and_then(Value::as_u64).unwrap_or(0);
    let rows = rows(data.get("tree").unwrap_or(&Value::Null));
    if args.json {
        let list: Vec<Value> = rows
            .iter()
            .map(|r| json!({"id": r.id, "hops": r.hops, "via": r.via, "root": r.root}))
            .collect();
        println!(
            "{}",
            json!({"node_id": me, "count": rows.len(), "nodes": list})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "node {me} reaches {} other node{}",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    if !rows.is_empty() {
        println!("{:>10}  {:>4}  {:>10}", "NODE", "HOPS", "VIA");
        for r in &rows {
            println!(
                "{:>10}  {:>4}  {:>10}{}",
                r.id,
                r.hops,
                r.via,
                if r.root { "  root" } else { "" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Renders a `subConnectionJson` tree as indented text.
pub fn render_tree(tree: &Value) -> String {
    fn label(t: &Value) -> String {
        let mut s = t
            .get("nodeId")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .to_string();
        if t.get("root").and_then(Value::as_bool) == Some(true) {
            s.push_str(" [root]");
        }
        if t.get("hasTimeAuthority").and_then(Value::as_bool) == Some(true) {
            s.push_str(" [time authority]");
        }
        s
    }
    fn walk(t: &Value, prefix: &str, out: &mut String) {
        let subs: &[Value] = t
            .get("subs")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice);
        for (i, sub) in subs.iter().enumerate() {
            let last = i + 1 == subs.len();
            out.push_str(prefix);
            out.push_str(if last { "└── " } else { "├── " });
            out.push_str(&label(sub));
            out.push('\n');
            walk(
                sub,
                &format!("{prefix}{}", if last { "    " } else { "│   " }),
                out,
            );
        }
    }
    let mut out = format!("{} (this node)\n", label(tree));
    walk(tree, "", &mut out);
    out
}

/// `pmesh topology`.
pub fn topology(args: TopologyArgs) -> anyhow::Result<ExitCode> {
    let tree = request(&args.control, "topology", Value::Null)?;
    if args.json {
        println!("{tree}");
    } else {
        print!("{}", render_tree(&tree));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Value {
        serde_json::from_str(
            r#"{"nodeId":1,"subs":[{"nodeId":2,"subs":[{"nodeId":3},{"nodeId":4,"root":true}]},{"nodeId":5}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn rows_have_hops_and_via() {
        let r = rows(&tree());
        let got: Vec<(u32, u32, u32, bool)> =
            r.iter().map(|r| (r.id, r.hops, r.via, r.root)).collect();
        assert_eq!(
            got,
            [
                (2, 1, 2, false),
                (3, 2, 2, false),
                (4, 2, 2, true),
                (5, 1, 5, false)
            ]
        );
    }

    #[test]
    fn renders_an_indented_tree() {
        assert_eq!(
            render_tree(&tree()),
            "1 (this node)\n├── 2\n│   ├── 3\n│   └── 4 [root]\n└── 5\n"
        );
    }
}

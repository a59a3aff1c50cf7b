//! The replies of `CLUSTER SLOTS` and `CLUSTER NODES`, parsed. Pure.

use redis::Value;

/// One range of `CLUSTER SLOTS`: slots `start..=end` served by the primary at `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub addr: String,
}

/// Parses a `CLUSTER SLOTS` reply: `[[start, end, [ip, port, id, ...], replica...], ...]`. The
/// first node of a range is its primary; an empty or `?` ip means the node we asked.
pub fn parse_cluster_slots(reply: &Value, asked: &str) -> Option<Vec<SlotRange>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let Value::Array(items) = r else { return None };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
            (items.first(), items.get(1), items.get(2))
        else {
            return None;
        };
        let host = match primary.first()? {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            _ => return None,
        };
        let host = match host.as_str() {
            "" | "?" => asked_host.to_string(),
            _ => host,
        };
        let Some(Value::Int(port)) = primary.get(1) else {
            return None;
        };
        out.push(SlotRange {
            start: u16::try_from(*start).ok()?,
            end: u16::try_from(*end).ok()?,
            addr: format!("{host}:{port}"),
        });
    }
    Some(out)
}

/// The slots a node is importing, from its `CLUSTER NODES`: its own line (flag `myself`) lists
/// them as `[slot-<-source id]`.
pub fn parse_importing(nodes: &str) -> Vec<u16> {
    nodes
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|flags| flags.split(',').any(|f| f == "myself"))
        })
        .flat_map(|l| l.split_whitespace().skip(8))
        .filter_map(|s| s.strip_prefix('[')?.split_once("-<-")?.0.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn cluster_slots_give_each_range_its_primary() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7001), bulk("id1")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7004), bulk("id4")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![bulk(""), Value::Int(7002), bulk("id2")]),
            ]),
        ]);
        assert_eq!(
            parse_cluster_slots(&reply, "10.0.0.9:7002").unwrap(),
            vec![
                SlotRange {
                    start: 0,
                    end: 5460,
                    addr: "127.0.0.1:7001".into()
                },
                SlotRange {
                    start: 5461,
                    end: 16383,
                    addr: "10.0.0.9:7002".into()
                },
            ]
        );
        assert!(parse_cluster_slots(&Value::Nil, "x:1").is_none());
    }

    #[test]
    fn importing_slots_are_read_from_the_nodes_own_line() {
        let nodes = "\
07c3 127.0.0.1:30004@31004 master - 0 1 4 connected 11000-16383 [93-<-292f8b36]
e7d1 127.0.0.1:30002@31002 myself,master - 0 0 2 connected 5461-10922 [93-<-292f8b36] [94->-07c3] [95-<-07c3]
292f 127.0.0.1:30001@31001 master - 0 1 1 connected 0-5460
";
        assert_eq!(parse_importing(nodes), vec![93, 95]);
        assert!(parse_importing("").is_empty());
    }
}

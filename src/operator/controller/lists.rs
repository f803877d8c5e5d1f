//! How the watches fetch their initial lists. A streaming list (WatchList: one watch with
//! `sendInitialEvents=true`, served from kube-apiserver's watch cache) spares the server from
//! building, and the operator from decoding, whole pages of 500 Pods at once; a paginated LIST
//! works on every server. `auto` asks the server once, at start: servers without WatchList (older
//! than v1.32, or with the `WatchList` feature gate off) refuse the parameter with 400/422.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, PartialObjectMeta, WatchEvent, WatchParams};
use kube::runtime::watcher;
use tracing::{info, warn};

/// The `--initial-lists` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitialLists {
    /// Streaming where the server supports it, else paginated.
    #[default]
    Auto,
    Streaming,
    Paginated,
}

/// How long the probe waits for the server's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The watcher configuration every watch starts from.
pub(super) fn base(streaming: bool) -> watcher::Config {
    let config = watcher::Config::default();
    if streaming {
        config.streaming_lists()
    } else {
        config
    }
}

/// Whether the watches stream their initial lists, decided once at start (logged).
pub(super) async fn resolve(client: &Client, choice: InitialLists) -> bool {
    let streaming = match choice {
        InitialLists::Streaming => true,
        InitialLists::Paginated => false,
        InitialLists::Auto => match probe(client).await {
            Ok(()) => true,
            Err(reason) => {
                info!(%reason, "initial lists: paginated LIST (the server does not stream lists)");
                false
            }
        },
    };
    if streaming {
        info!("initial lists: streamed (WatchList, sendInitialEvents)");
    }
    streaming
}

/// One streaming list of a single namespace (`default`), read to its end-of-list bookmark.
async fn probe(client: &Client) -> Result<(), String> {
    let api = Api::<PartialObjectMeta<Namespace>>::all(client.clone());
    let params = WatchParams::streaming_lists()
        .fields("metadata.name=default")
        .timeout(PROBE_TIMEOUT.as_secs() as u32);
    let answer = tokio::time::timeout(PROBE_TIMEOUT, async {
        let mut events = std::pin::pin!(
            api.watch_metadata(&params, "0")
                .await
                .map_err(|e| format!("the server refused a streaming list: {e}"))?
        );
        while let Some(event) = events.next().await {
            match event.map_err(|e| format!("reading a streaming list: {e}"))? {
                WatchEvent::Bookmark(b) if initial_events_end(&b.metadata.annotations) => {
                    return Ok(());
                }
                WatchEvent::Error(e) => {
                    return Err(format!("the server ended a streaming list: {e}"));
                }
                _ => {}
            }
        }
        Err("the server ended the streaming list without its end-of-list bookmark".to_owned())
    })
    .await;
    answer.unwrap_or_else(|_| {
        warn!("the streaming-list probe got no answer in {PROBE_TIMEOUT:?}");
        Err(format!("no end-of-list bookmark within {PROBE_TIMEOUT:?}"))
    })
}

/// The bookmark that ends a streaming list carries `k8s.io/initial-events-end: "true"`.
fn initial_events_end(annotations: &std::collections::BTreeMap<String, String>) -> bool {
    annotations
        .get("k8s.io/initial-events-end")
        .is_some_and(|v| v == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_configure_the_watcher() {
        assert_eq!(
            base(true).initial_list_strategy,
            watcher::InitialListStrategy::StreamingList
        );
        assert_eq!(
            base(false).initial_list_strategy,
            watcher::InitialListStrategy::ListWatch
        );
    }

    #[test]
    fn only_the_marked_bookmark_ends_the_list() {
        let mut a = std::collections::BTreeMap::new();
        assert!(!initial_events_end(&a));
        a.insert("k8s.io/initial-events-end".to_owned(), "false".to_owned());
        assert!(!initial_events_end(&a));
        a.insert("k8s.io/initial-events-end".to_owned(), "true".to_owned());
        assert!(initial_events_end(&a));
    }
}

//! etcd TLS (`--etcd-cafile/--etcd-certfile/--etcd-keyfile`) and username/password
//! authentication, against a real etcd.

mod support;

use std::time::Duration;
use support::etcd::EtcdServer;
use weft_subnet::etcd::{EtcdError, EtcdOptions, EtcdSubnetManager, TlsFiles};
use weft_subnet::{LeaseAttrs, NetworkConfig};

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}"#;

#[tokio::test]
async fn tls_with_client_certificate() {
    let etcd = EtcdServer::start_tls();
    etcd.etcdctl(&["put", "/coreos.com/network/config", CONFIG]);
    let tls = etcd.tls.clone().unwrap();
    let mut options = EtcdOptions::new(vec![etcd.endpoint()]);
    options.tls = TlsFiles {
        ca_file: Some(tls.ca.clone()),
        cert_file: Some(tls.client_cert.clone()),
        key_file: Some(tls.client_key.clone()),
    };
    let manager = EtcdSubnetManager::connect(&options)
        .await
        .expect("TLS connect");
    let config = manager.network_config().await.expect("config over TLS");
    let attrs = LeaseAttrs {
        public_ip: "198.18.0.11".parse().unwrap(),
        ..LeaseAttrs::default()
    };
    let lease = manager
        .acquire_lease(&config, &attrs, None)
        .await
        .expect("lease over TLS");
    let stored = etcd.etcdctl(&[
        "get",
        &format!("/coreos.com/network/subnets/{}", lease.key),
        "--print-value-only",
    ]);
    assert_eq!(
        stored.trim(),
        r#"{"PublicIP":"198.18.0.11","PublicIPv6":null}"#
    );

    // Without the client certificate etcd refuses us; weft reports an error, not a hang.
    let mut options = EtcdOptions::new(vec![etcd.endpoint()]);
    options.tls = TlsFiles {
        ca_file: Some(tls.ca.clone()),
        ..TlsFiles::default()
    };
    options.request_timeout = Duration::from_secs(3);
    let result = match EtcdSubnetManager::connect(&options).await {
        Ok(manager) => manager
            .network_config()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(
        result.is_err(),
        "connecting without a client certificate must fail"
    );
}

#[tokio::test]
async fn unreadable_tls_file_names_the_path() {
    let mut options = EtcdOptions::new(vec!["https://127.0.0.1:1".into()]);
    options.tls = TlsFiles {
        ca_file: Some("/nonexistent/ca.crt".into()),
        cert_file: None,
        key_file: None,
    };
    let err = EtcdSubnetManager::connect(&options).await.unwrap_err();
    assert!(matches!(err, EtcdError::TlsFile { .. }));
    assert!(
        err.to_string()
            .starts_with("cannot read etcd TLS file /nonexistent/ca.crt:"),
        "{err}"
    );
}

#[tokio::test]
async fn username_and_password() {
    let etcd = EtcdServer::start();
    etcd.etcdctl(&["put", "/coreos.com/network/config", CONFIG]);
    etcd.etcdctl(&["user", "add", "root:s3cret"]);
    etcd.etcdctl(&["auth", "enable"]);

    let mut options = EtcdOptions::new(vec![etcd.endpoint()]);
    options.username = Some("root".into());
    options.password = Some("s3cret".into());
    let manager = EtcdSubnetManager::connect(&options)
        .await
        .expect("authenticated connect");
    let config: NetworkConfig = manager.network_config().await.expect("config with auth");
    assert_eq!(config.backend.kind.name(), "alloc");

    options.password = Some("wrong".into());
    let err = EtcdSubnetManager::connect(&options).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot connect to etcd at {}:", etcd.endpoint())),
        "{err}"
    );
    assert!(err.to_string().contains("authentication failed"), "{err}");

    // Without credentials, reads are refused by etcd and reported.
    let anonymous = EtcdSubnetManager::connect(&EtcdOptions::new(vec![etcd.endpoint()]))
        .await
        .expect("lazy connect");
    let err = anonymous.network_config().await.unwrap_err().to_string();
    assert!(
        err.contains("user name is empty") || err.contains("permission denied"),
        "{err}"
    );
}

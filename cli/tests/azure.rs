//! A repository on Azure Blob Storage (Azurite, Microsoft's emulator, on loopback) through
//! the settings docs/configuration.md documents: `AZURE_*` variables, the emulator switch,
//! and `--storage-option`.

mod common;

use common::Env;

#[test]
fn a_repository_on_azurite_through_the_documented_settings() {
    let server = pgkeep_testkit::AzuriteServer::shared()
        .expect("Azurite test server (run scripts/install-test-deps.sh)");
    let container = server.unique_container("cli").expect("container");
    let url = format!("az://{container}/db1");
    let mut e = Env::new();
    for (k, v) in server.env() {
        e.set(&k, &v);
    }
    e.set("PGKEEP_REPO", &url)
        .set("PGKEEP_PASSPHRASE", "azure secret");
    let (out, _) = e.expect(&["init"], 0);
    assert!(out.contains(&url), "{out}");
    e.expect(&["key", "list"], 0);
    // Create-if-absent holds on Azure: a second init refuses (exit 4), and the wrong
    // passphrase is told apart from a storage error (exit 3).
    e.expect(&["init"], 4);
    e.set("PGKEEP_PASSPHRASE", "nope");
    e.expect(&["key", "list"], 3);
    e.set("PGKEEP_PASSPHRASE", "azure secret");
    // Commands that lock, list and delete: on an empty repository they succeed.
    e.expect(&["verify"], 0);
    e.expect(&["prune"], 0);

    // The emulator switch: the well-known account and key, the address from
    // AZURITE_BLOB_STORAGE_URL.
    for (k, _) in server.env() {
        e.unset(&k);
    }
    e.set("AZURE_STORAGE_USE_EMULATOR", "true").set(
        "AZURITE_BLOB_STORAGE_URL",
        &format!("http://127.0.0.1:{}", server.port()),
    );
    e.expect(&["key", "list"], 0);

    // The endpoint as a storage option, the account and key from the environment.
    e.unset("AZURE_STORAGE_USE_EMULATOR")
        .unset("AZURITE_BLOB_STORAGE_URL")
        .set("AZURE_STORAGE_ACCOUNT_NAME", pgkeep_testkit::DEV_ACCOUNT)
        .set("AZURE_STORAGE_ACCOUNT_KEY", pgkeep_testkit::DEV_ACCOUNT_KEY);
    let endpoint = format!("azure_storage_endpoint={}", server.endpoint());
    e.expect(
        &[
            "--storage-option",
            &endpoint,
            "--storage-option",
            "azure_allow_http=true",
            "key",
            "list",
        ],
        0,
    );
    // Without the endpoint it would go to the real Azure; without plain HTTP allowed it
    // refuses the http:// endpoint: an error, not a hang.
    let (_, err) = e.expect(&["--storage-option", &endpoint, "key", "list"], 1);
    assert!(err.to_lowercase().contains("http"), "{err}");
}

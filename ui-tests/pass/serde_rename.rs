// serde `rename_all` and `rename` change the stored keys; queries still use Rust field names.
use db4::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
struct UserProfile {
    #[id]
    user_id: String,
    #[partition_key]
    tenant_id: String,
    #[index]
    #[serde(rename = "mail")]
    email_address: String,
    #[range_index]
    signed_up_at: i64,
    #[serde(skip)]
    session_cache: Option<String>,
}

fn main() -> db4::Result<()> {
    let schema = <UserProfile as Document>::schema();
    assert_eq!(schema.collection(), "user_profile");
    let db = Db::open_in_memory()?;
    let users = db.collection::<UserProfile>()?;
    let user = UserProfile {
        user_id: "u1".into(),
        tenant_id: "acme".into(),
        email_address: "ann@example.com".into(),
        signed_up_at: 7,
        session_cache: None,
    };
    users.insert(&user)?;
    let f = UserProfile::fields();
    let found = users
        .query()
        .filter(f.email_address.eq("ann@example.com") & f.tenant_id.eq("acme") & f.signed_up_at.between(1, 9))
        .all()?;
    assert_eq!(found, [user]);
    Ok(())
}

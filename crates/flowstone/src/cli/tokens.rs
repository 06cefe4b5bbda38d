//! `tokens create | list | revoke`: the API tokens `serve` accepts.

use flowstone_core::token;
use jiff::Timestamp;

use super::args::TokensCommand;
use super::{Ctx, EXIT_OK, Failure, usage};

pub(crate) async fn tokens(ctx: &Ctx, command: TokensCommand) -> Result<u8, Failure> {
    let store = ctx.engine.store();
    match command {
        TokensCommand::Create {
            name,
            right,
            expires_in,
        } => {
            let now = Timestamp::now();
            let expires_at = match expires_in {
                Some(lifetime) => Some(now.checked_add(lifetime).map_err(|_| {
                    usage(format!(
                        "--expires-in {lifetime:#} ends past the year 9999; give a shorter one"
                    ))
                })?),
                None => None,
            };
            let (new, secret) =
                token::generate(name.trim(), right, expires_at, now).map_err(|err| match err {
                    token::TokenError::Random(_) => Failure {
                        message: err.to_string(),
                        code: super::EXIT_FAILED,
                    },
                    other => usage(other.to_string()),
                })?;
            let record = store.create_token(new).await.map_err(|err| match err {
                flowstone_core::StoreError::Conflict(message) => usage(message),
                other => other.into(),
            })?;
            ctx.printer.token_created(&record, &secret);
            Ok(EXIT_OK)
        }
        TokensCommand::List { all } => {
            let now = Timestamp::now();
            let tokens: Vec<_> = store
                .tokens()
                .await?
                .into_iter()
                .filter(|t| all || t.revoked_at.is_none())
                .collect();
            ctx.printer.tokens(&tokens, now);
            Ok(EXIT_OK)
        }
        TokensCommand::Revoke { name } => {
            let given = name.trim();
            // A leaked secret may be given instead of the name: it is
            // looked up by hash and never printed back.
            let name = if given.starts_with(token::SECRET_PREFIX) {
                match store.token_by_hash(&token::hash(given)).await? {
                    Some(found) => found.name,
                    None => {
                        return Err(usage(
                            "no token that is not revoked has that secret; `tokens list --all` \
                             shows every token",
                        ));
                    }
                }
            } else {
                given.to_owned()
            };
            match store.revoke_token(&name, Timestamp::now()).await? {
                Some(record) => {
                    ctx.printer.token_revoked(&record);
                    Ok(EXIT_OK)
                }
                None => {
                    let known = store.tokens().await?.iter().any(|t| t.name == name);
                    Err(usage(if known {
                        format!("the token named {name:?} is already revoked")
                    } else {
                        format!("no token named {name:?}; `tokens list --all` shows every token")
                    }))
                }
            }
        }
    }
}

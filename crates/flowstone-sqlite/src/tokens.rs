//! API tokens: stored as hashes, looked up by hash on every request.

use flowstone_core::store::{StoreError, StoreResult};
use flowstone_core::token::{NewToken, TokenRecord};
use jiff::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{Connection as _, Row};

use crate::SqliteStore;
use crate::codec::{self, DbResult, micros};

macro_rules! columns {
    () => {
        "id, name, rights, prefix, created_at, expires_at, revoked_at, last_used_at"
    };
}

impl SqliteStore {
    pub(crate) async fn write_create_token(&self, token: NewToken) -> StoreResult<TokenRecord> {
        let mut conn = self.writer.lock().await;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.db()?;

        // A token with the name that has expired (and was never revoked)
        // gives the name up: it is revoked now, in this transaction.
        sqlx::query(
            "UPDATE api_tokens SET revoked_at = ?2 \
             WHERE name = ?1 AND revoked_at IS NULL AND expires_at <= ?2",
        )
        .bind(&token.name)
        .bind(micros(token.created_at))
        .execute(&mut *tx)
        .await
        .db()?;

        // A name in use by a live token, or (never in practice) a hash in
        // use, conflicts: the insert does nothing and returns no row.
        let row = sqlx::query(concat!(
            "INSERT INTO api_tokens (name, rights, hash, prefix, created_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING RETURNING ",
            columns!()
        ))
        .bind(&token.name)
        .bind(token.right.as_str())
        .bind(&token.hash)
        .bind(&token.prefix)
        .bind(micros(token.created_at))
        .bind(token.expires_at.map(micros))
        .fetch_optional(&mut *tx)
        .await
        .db()?;
        let Some(row) = row else {
            // Nothing is revoked when nothing is created.
            tx.rollback().await.db()?;
            return Err(conflict(&token.name));
        };
        let record = record(&row)?;
        tx.commit().await.db()?;
        Ok(record)
    }

    pub(crate) async fn read_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        let mut conn = self.reader().await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM api_tokens ORDER BY created_at DESC, id DESC"
        ))
        .fetch_all(&mut *conn)
        .await
        .db()?;
        rows.iter().map(record).collect()
    }

    pub(crate) async fn read_token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRecord>> {
        let mut conn = self.reader().await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM api_tokens WHERE hash = ?1 AND revoked_at IS NULL"
        ))
        .bind(hash)
        .fetch_optional(&mut *conn)
        .await
        .db()?;
        row.as_ref().map(record).transpose()
    }

    pub(crate) async fn read_has_active_tokens(&self, now: Timestamp) -> StoreResult<bool> {
        let mut conn = self.reader().await?;
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM api_tokens \
             WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1))",
        )
        .bind(micros(now))
        .fetch_one(&mut *conn)
        .await
        .db()
    }

    pub(crate) async fn write_revoke_token(
        &self,
        name: &str,
        now: Timestamp,
    ) -> StoreResult<Option<TokenRecord>> {
        let mut conn = self.writer.lock().await;
        let row = sqlx::query(concat!(
            "UPDATE api_tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL \
             RETURNING ",
            columns!()
        ))
        .bind(name)
        .bind(micros(now))
        .fetch_optional(&mut *conn)
        .await
        .db()?;
        row.as_ref().map(record).transpose()
    }

    pub(crate) async fn write_token_used(&self, id: i64, now: Timestamp) -> StoreResult<()> {
        let mut conn = self.writer.lock().await;
        sqlx::query("UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1")
            .bind(id)
            .bind(micros(now))
            .execute(&mut *conn)
            .await
            .db()?;
        Ok(())
    }
}

/// A live token (neither revoked nor expired) has the name.
fn conflict(name: &str) -> StoreError {
    StoreError::Conflict(format!(
        "a token named {name:?} exists and has not expired; revoke it first, or choose \
         another name"
    ))
}

/// Reads an `api_tokens` row.
fn record(row: &SqliteRow) -> StoreResult<TokenRecord> {
    let rights: String = row.try_get("rights").db()?;
    Ok(TokenRecord {
        id: row.try_get("id").db()?,
        name: row.try_get("name").db()?,
        right: rights
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("api_tokens.rights: {rights:?}")))?,
        prefix: row.try_get("prefix").db()?,
        created_at: codec::timestamp("api_tokens.created_at", row.try_get("created_at").db()?)?,
        expires_at: codec::opt_timestamp("api_tokens.expires_at", row.try_get("expires_at").db()?)?,
        revoked_at: codec::opt_timestamp("api_tokens.revoked_at", row.try_get("revoked_at").db()?)?,
        last_used_at: codec::opt_timestamp(
            "api_tokens.last_used_at",
            row.try_get("last_used_at").db()?,
        )?,
    })
}

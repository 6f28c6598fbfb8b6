//! The durable alert log: one SQLite file in WAL mode, synchronous FULL, so an alert that was
//! published (always after its commit) survives a crash, a `kill -9` or a power cut.
//!
//! Alerts are kept as JSON documents beside the columns that replay filters on; the sequence is
//! SQLite's AUTOINCREMENT rowid, which is never reused even after retention deletes rows. Call
//! summaries are kept the same way, so `GetCall` answers for ended calls.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::seal::{self, Sealer};
use super::{Acknowledgement, AlertFilter, CallMeta, LoggedAlert, Severity};
use crate::transcribe::{Cue, Redacted};
use crate::verdict::voice::Voiceprint;
use crate::verdict::{AlertKind, WindowScore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("alert log {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot create the alert log's folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("alert log: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("alert log reader stopped: {0}")]
    Interrupted(String),
    #[error("alert log holds a record that cannot be read: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("alert log: {0}")]
    Sealed(#[from] seal::SealError),
}

/// An alert before it has a place in the log.
#[derive(Debug, Clone)]
pub struct NewAlert {
    pub tenant: String,
    pub call_id: String,
    pub kind: AlertKind,
    pub severity: Severity,
    pub p_spoof: f32,
    pub threshold: f32,
    pub audio_ms: u64,
    pub wall_time_ms: i64,
    pub evidence: Vec<WindowScore>,
    pub model: String,
    pub transcript_snippet: Redacted,
    pub risk: f32,
    pub cues: Vec<Cue>,
    pub metadata: CallMeta,
    pub voice_similarity: Option<f32>,
}

/// The log. Writes go through one connection, reads (replay, `GetCall`) through another, so a
/// replaying subscriber never waits for a commit.
pub struct AlertLog {
    path: PathBuf,
    write: Mutex<Connection>,
    read: Mutex<Connection>,
    /// Encrypts transcript fields at rest when the store has a key.
    sealer: Option<Sealer>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    call_id TEXT NOT NULL,
    severity INTEGER NOT NULL,
    wall_time_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_by_tenant ON alerts (tenant, seq);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (wall_time_ms);
CREATE TABLE IF NOT EXISTS calls (
    tenant TEXT NOT NULL,
    call_id TEXT NOT NULL,
    ended_wall_time_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_id ON calls (tenant, call_id, ended_wall_time_ms);
CREATE INDEX IF NOT EXISTS calls_by_time ON calls (ended_wall_time_ms);
CREATE TABLE IF NOT EXISTS acks (
    alert_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ack_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS voiceprints (
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (tenant, kind, name)
);
CREATE TABLE IF NOT EXISTS sink_acks (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sinks (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_attempt_ms INTEGER,
    last_delivered_ms INTEGER
);
";

type AlertRow = (i64, String, Option<String>);

fn row_parts(row: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRow> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

fn read_alert(
    sealer: Option<&Sealer>,
    (seq, body, ack): AlertRow,
) -> Result<LoggedAlert, StoreError> {
    let mut alert: LoggedAlert = serde_json::from_str(&seal::open(sealer, body, "alerts")?)?;
    alert.sequence = seq as u64;
    alert.acknowledged = ack
        .map(|a| -> Result<Acknowledgement, StoreError> {
            Ok(serde_json::from_str(&seal::open(sealer, a, "acks")?)?)
        })
        .transpose()?;
    Ok(alert)
}

/// Where a delivery sink stands: the last alert it delivered (or passed over), and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkState {
    pub name: String,
    /// Every alert up to this sequence is done with.
    pub sequence: u64,
    pub delivered: u64,
    /// Failed attempts since the sink was created.
    pub failures: u64,
    /// The last failure's reason, cleared by the next delivery.
    pub last_error: Option<String>,
    pub last_attempt_ms: Option<i64>,
    pub last_delivered_ms: Option<i64>,
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let open = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(open)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open)?;
    // Retention really deletes: freed space is overwritten with zeros, not left to be read
    // back from the file (see `prune`).
    conn.pragma_update(None, "secure_delete", "ON")
        .map_err(open)?;
    Ok(conn)
}

impl AlertLog {
    /// Opens the log the store config names, with its encryption key if it has one.
    pub fn open_store(store: &crate::config::StoreConfig) -> Result<Self, StoreError> {
        let sealer = store
            .encryption_key_file
            .as_deref()
            .map(Sealer::from_file)
            .transpose()?;
        let mut log = Self::open(&store.path)?;
        log.sealer = sealer;
        Ok(log)
    }

    /// Opens (creating if needed) the log at `path`, without encryption.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Folder {
                path: dir.to_owned(),
                source,
            })?;
        }
        let write = connect(path)?;
        write
            .execute_batch(SCHEMA)
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        let read = connect(path)?;
        Ok(Self {
            path: path.to_owned(),
            write: Mutex::new(write),
            read: Mutex::new(read),
            sealer: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes an alert and commits it to disk; returns it with its sequence and id.
    pub fn append(&self, new: NewAlert) -> Result<LoggedAlert, StoreError> {
        let mut id_hash = Sha256::new();
        id_hash.update(new.tenant.as_bytes());
        id_hash.update([0]);
        id_hash.update(new.call_id.as_bytes());
        id_hash.update(new.audio_ms.to_le_bytes());
        id_hash.update(new.wall_time_ms.to_le_bytes());
        id_hash.update(std::process::id().to_le_bytes());
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        id_hash.update(
            COUNTER
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_le_bytes(),
        );
        let id_hash = id_hash.finalize();
        let id: String = id_hash[..12].iter().map(|b| format!("{b:02x}")).collect();
        let mut alert = LoggedAlert {
            sequence: 0,
            id: format!("al_{id}"),
            tenant: new.tenant,
            call_id: new.call_id,
            kind: new.kind,
            severity: new.severity,
            p_spoof: new.p_spoof,
            threshold: new.threshold,
            audio_ms: new.audio_ms,
            wall_time_ms: new.wall_time_ms,
            evidence: new.evidence,
            model: new.model,
            transcript_snippet: new.transcript_snippet,
            risk: new.risk,
            cues: new.cues,
            metadata: new.metadata,
            voice_similarity: new.voice_similarity,
            acknowledged: None,
        };
        let body = seal::seal(
            self.sealer.as_ref(),
            serde_json::to_string(&alert)?,
            "alerts",
        )?;
        let conn = self.write.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "INSERT INTO alerts (id, tenant, call_id, severity, wall_time_ms, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                alert.id,
                alert.tenant,
                alert.call_id,
                alert.severity as i64,
                alert.wall_time_ms,
                body
            ],
        )?;
        alert.sequence = conn.last_insert_rowid() as u64;
        Ok(alert)
    }

    /// Up to `limit` of the tenant's alerts with a sequence above `after`, oldest first.
    pub fn after(
        &self,
        tenant: &str,
        filter: &AlertFilter,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LoggedAlert>, StoreError> {
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached(
            "SELECT a.seq, a.body, k.body FROM alerts a LEFT JOIN acks k ON k.alert_id = a.id
             WHERE a.tenant = ?1 AND a.seq > ?2 AND (?3 IS NULL OR a.call_id = ?3)
               AND a.severity >= ?4
             ORDER BY a.seq LIMIT ?5",
        )?;
        let rows = stmt.query_map(
            params![
                tenant,
                after as i64,
                filter.call_id,
                filter.min_severity.map_or(0, |s| s as i64),
                limit as i64
            ],
            row_parts,
        )?;
        rows.map(|r| read_alert(self.sealer.as_ref(), r?)).collect()
    }

    /// The highest sequence ever given (0 for an empty log).
    pub fn last_sequence(&self) -> Result<u64, StoreError> {
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let seq: Option<i64> = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'alerts'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(seq.unwrap_or(0) as u64)
    }

    /// Up to `limit` alerts of every tenant with a sequence above `after`, oldest first.
    pub fn all_after(&self, after: u64, limit: usize) -> Result<Vec<LoggedAlert>, StoreError> {
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached(
            "SELECT a.seq, a.body, k.body FROM alerts a LEFT JOIN acks k ON k.alert_id = a.id
             WHERE a.seq > ?1 ORDER BY a.seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after as i64, limit as i64], row_parts)?;
        rows.map(|r| read_alert(self.sealer.as_ref(), r?)).collect()
    }

    /// The tenant's newest `limit` alerts, newest first (the supervisor's alert feed).
    pub fn recent(&self, tenant: &str, limit: usize) -> Result<Vec<LoggedAlert>, StoreError> {
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached(
            "SELECT a.seq, a.body, k.body FROM alerts a LEFT JOIN acks k ON k.alert_id = a.id
             WHERE a.tenant = ?1 ORDER BY a.seq DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![tenant, limit as i64], row_parts)?;
        rows.map(|r| read_alert(self.sealer.as_ref(), r?)).collect()
    }

    /// Records who acknowledged the tenant's alert `alert_id` (a later one replaces it);
    /// `None` when the tenant has no such alert.
    pub fn acknowledge(
        &self,
        tenant: &str,
        alert_id: &str,
        by: &str,
        note: &str,
        at_ms: i64,
    ) -> Result<Option<Acknowledgement>, StoreError> {
        let ack = Acknowledgement {
            alert_id: alert_id.to_owned(),
            by: by.chars().take(100).collect(),
            note: crate::transcribe::redact(&note.chars().take(1000).collect::<String>()).0,
            at_ms,
        };
        let body = seal::seal(self.sealer.as_ref(), serde_json::to_string(&ack)?, "acks")?;
        let conn = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let known: Option<i64> = conn
            .query_row(
                "SELECT seq FROM alerts WHERE id = ?1 AND tenant = ?2",
                params![alert_id, tenant],
                |r| r.get(0),
            )
            .optional()?;
        if known.is_none() {
            return Ok(None);
        }
        conn.execute(
            "INSERT INTO acks (alert_id, tenant, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (alert_id) DO UPDATE SET body = excluded.body",
            params![alert_id, tenant, body],
        )?;
        // And in the outbox the sinks deliver from, in the order they were given.
        conn.execute(
            "INSERT INTO ack_events (tenant, body) VALUES (?1, ?2)",
            params![tenant, body],
        )?;
        Ok(Some(ack))
    }

    /// Keeps (or replaces) a tenant's voiceprint of `kind` (`allowed` or `protected`): no audio,
    /// the embedding and score profile only, sealed at rest like transcripts when the store has
    /// a key (a voiceprint is biometric data).
    pub fn put_voice(
        &self,
        tenant: &str,
        kind: &str,
        voice: &Voiceprint,
    ) -> Result<(), StoreError> {
        let body = seal::seal(
            self.sealer.as_ref(),
            serde_json::to_string(voice)?,
            "voiceprints",
        )?;
        let conn = self.write.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "INSERT OR REPLACE INTO voiceprints (tenant, kind, name, created_ms, body) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![tenant, kind, voice.name, super::now_ms(), body],
        )?;
        Ok(())
    }

    /// A tenant's voiceprints of `kind`, by name.
    pub fn voices(&self, tenant: &str, kind: &str) -> Result<Vec<Voiceprint>, StoreError> {
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached(
            "SELECT body FROM voiceprints WHERE tenant = ?1 AND kind = ?2 ORDER BY name",
        )?;
        let bodies = stmt
            .query_map(params![tenant, kind], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        bodies
            .into_iter()
            .map(|b| {
                Ok(serde_json::from_str(&seal::open(
                    self.sealer.as_ref(),
                    b,
                    "voiceprints",
                )?)?)
            })
            .collect()
    }

    /// Forgets a voiceprint; whether there was one.
    pub fn remove_voice(&self, tenant: &str, kind: &str, name: &str) -> Result<bool, StoreError> {
        let conn = self.write.lock().unwrap_or_else(|e| e.into_inner());
        Ok(conn.execute(
            "DELETE FROM voiceprints WHERE tenant = ?1 AND kind = ?2 AND name = ?3",
            params![tenant, kind, name],
        )? > 0)
    }

    /// The log position of the alert with this id, if it is still kept.
    pub fn alert_sequence(&self, id: &str) -> Result<Option<u64>, StoreError> {
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        Ok(conn
            .query_row("SELECT seq FROM alerts WHERE id = ?1", params![id], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .map(|s| s as u64))
    }

    /// Up to `limit` acknowledgements given after outbox position `after`: (position,
    /// tenant, acknowledgement), oldest first.
    pub fn acks_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String, Acknowledgement)>, StoreError> {
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached(
            "SELECT seq, tenant, body FROM ack_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after as i64, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, tenant, body) = row?;
            let body = seal::open(self.sealer.as_ref(), body, "acks")?;
            out.push((seq as u64, tenant, serde_json::from_str(&body)?));
        }
        Ok(out)
    }

    /// Where a sink stands in the acknowledgement outbox; a new sink starts after the newest.
    pub fn sink_ack_start(&self, name: &str) -> Result<u64, StoreError> {
        let conn = self.write.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "INSERT OR IGNORE INTO sink_acks (name, seq)
             VALUES (?1, COALESCE((SELECT MAX(seq) FROM ack_events), 0))",
            params![name],
        )?;
        Ok(conn.query_row(
            "SELECT seq FROM sink_acks WHERE name = ?1",
            params![name],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    pub fn sink_ack_advance(&self, name: &str, seq: u64) -> Result<(), StoreError> {
        let conn = self.write.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "UPDATE sink_acks SET seq = MAX(seq, ?2) WHERE name = ?1",
            params![name, seq as i64],
        )?;
        Ok(())
    }

    /// The tenant's calls that ended after `since_ms`, newest first, whose call id or ANI
    /// contains `search` (all when empty).
    pub fn ended_calls<T: DeserializeOwned>(
        &self,
        tenant: &str,
        since_ms: i64,
        search: &str,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached(
            "SELECT body FROM calls WHERE tenant = ?1 AND ended_wall_time_ms >= ?2
               AND (?3 = '' OR instr(call_id, ?3) > 0
                    OR instr(json_extract(body, '$.metadata.ani'), ?3) > 0)
             ORDER BY ended_wall_time_ms DESC LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![tenant, since_ms, search, limit as i64], |r| {
            r.get::<_, String>(0)
        })?;
        self.open_calls(rows)
    }

    /// Every tenant's calls that ended at or after `since_ms`, oldest first, at most `limit`.
    pub fn calls_ended_since<T: DeserializeOwned>(
        &self,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached(
            "SELECT body FROM calls WHERE ended_wall_time_ms >= ?1
             ORDER BY ended_wall_time_ms, rowid LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![since_ms, limit as i64], |r| r.get::<_, String>(0))?;
        self.open_calls(rows)
    }

    /// Call records as stored (sealed JSON bodies), opened and parsed.
    fn open_calls<T: DeserializeOwned>(
        &self,
        bodies: impl Iterator<Item = rusqlite::Result<String>>,
    ) -> Result<Vec<T>, StoreError> {
        bodies
            .map(|body| {
                Ok(serde_json::from_str(&seal::open(
                    self.sealer.as_ref(),
                    body?,
                    "calls",
                )?)?)
            })
            .collect()
    }

    /// How many alerts above `after` belong to `tenants` (every tenant when empty).
    pub fn count_after(&self, after: u64, tenants: &[String]) -> Result<u64, StoreError> {
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached("SELECT tenant FROM alerts WHERE seq > ?1")?;
        let rows = stmt.query_map(params![after as i64], |row| row.get::<_, String>(0))?;
        let mut n = 0;
        for tenant in rows {
            let tenant = tenant?;
            if tenants.is_empty() || tenants.contains(&tenant) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// A sink's state; a sink seen for the first time starts after the newest alert (it is
    /// sent what is raised from now on, not the log's history).
    pub fn sink_start(&self, name: &str) -> Result<SinkState, StoreError> {
        let last = self.last_sequence()?;
        {
            let conn = self.write.lock().unwrap_or_else(|e| e.into_inner());
            conn.execute(
                "INSERT OR IGNORE INTO sinks (name, seq) VALUES (?1, ?2)",
                params![name, last as i64],
            )?;
        }
        Ok(self
            .sink_state(name)?
            .expect("the sink's row was just written"))
    }

    pub fn sink_state(&self, name: &str) -> Result<Option<SinkState>, StoreError> {
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        Ok(conn
            .query_row(
                "SELECT seq, delivered, failures, last_error, last_attempt_ms, last_delivered_ms
                 FROM sinks WHERE name = ?1",
                params![name],
                |r| {
                    Ok(SinkState {
                        name: name.to_owned(),
                        sequence: r.get::<_, i64>(0)? as u64,
                        delivered: r.get::<_, i64>(1)? as u64,
                        failures: r.get::<_, i64>(2)? as u64,
                        last_error: r.get(3)?,
                        last_attempt_ms: r.get(4)?,
                        last_delivered_ms: r.get(5)?,
                    })
                },
            )
            .optional()?)
    }

    /// The sink is done with every alert up to `sequence`; `delivered` of them went out.
    pub fn sink_advance(
        &self,
        name: &str,
        sequence: u64,
        delivered: u64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let conn = self.write.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "UPDATE sinks SET seq = MAX(seq, ?2), delivered = delivered + ?3,
                 last_error = CASE WHEN ?3 > 0 THEN NULL ELSE last_error END,
                 last_delivered_ms = CASE WHEN ?3 > 0 THEN ?4 ELSE last_delivered_ms END,
                 last_attempt_ms = CASE WHEN ?3 > 0 THEN ?4 ELSE last_attempt_ms END
             WHERE name = ?1",
            params![name, sequence as i64, delivered as i64, now_ms],
        )?;
        Ok(())
    }

    /// A delivery attempt failed; the sink stays where it was.
    pub fn sink_failed(&self, name: &str, error: &str, now_ms: i64) -> Result<(), StoreError> {
        let conn = self.write.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "UPDATE sinks SET failures = failures + 1, last_error = ?2, last_attempt_ms = ?3
             WHERE name = ?1",
            params![name, error, now_ms],
        )?;
        Ok(())
    }

    /// Records an ended call.
    pub fn put_call(
        &self,
        tenant: &str,
        call_id: &str,
        ended_wall_time_ms: i64,
        record: &impl Serialize,
    ) -> Result<(), StoreError> {
        let body = seal::seal(
            self.sealer.as_ref(),
            serde_json::to_string(record)?,
            "calls",
        )?;
        let conn = self.write.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "INSERT INTO calls (tenant, call_id, ended_wall_time_ms, body) VALUES (?1, ?2, ?3, ?4)",
            params![tenant, call_id, ended_wall_time_ms, body],
        )?;
        Ok(())
    }

    /// The most recent ended call of the tenant with this id.
    pub fn get_call<T: DeserializeOwned>(
        &self,
        tenant: &str,
        call_id: &str,
    ) -> Result<Option<T>, StoreError> {
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let body: Option<String> = conn
            .query_row(
                "SELECT body FROM calls WHERE tenant = ?1 AND call_id = ?2
                 ORDER BY ended_wall_time_ms DESC, rowid DESC LIMIT 1",
                params![tenant, call_id],
                |r| r.get(0),
            )
            .optional()?;
        body.map(|b| -> Result<T, StoreError> {
            Ok(serde_json::from_str(&seal::open(
                self.sealer.as_ref(),
                b,
                "calls",
            )?)?)
        })
        .transpose()
    }

    /// Deletes alerts and calls from before `cutoff_ms`; returns how many of each went.
    ///
    /// With `secure_delete` the deleted records are overwritten in the pages that held them, and
    /// the write-ahead log (which holds copies of pages from before the delete) is checkpointed
    /// into the file and truncated, so neither file still holds them. (What the file system or
    /// the disk keeps of blocks it freed is beyond SQLite's reach: encrypt the volume for that.)
    pub fn prune(&self, cutoff_ms: i64) -> Result<(usize, usize), StoreError> {
        let conn = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let alerts = conn.execute(
            "DELETE FROM alerts WHERE wall_time_ms < ?1",
            params![cutoff_ms],
        )?;
        let calls = conn.execute(
            "DELETE FROM calls WHERE ended_wall_time_ms < ?1",
            params![cutoff_ms],
        )?;
        conn.execute(
            "DELETE FROM acks WHERE alert_id NOT IN (SELECT id FROM alerts)",
            [],
        )?;
        // The acknowledgement outbox too (its notes are what an agent wrote about a call).
        conn.execute(
            "DELETE FROM ack_events
             WHERE json_extract(body, '$.alert_id') NOT IN (SELECT id FROM alerts)",
            [],
        )?;
        if alerts + calls > 0 {
            // (busy, frames in the log, frames checkpointed): a reader in the middle of a
            // replay can keep the log from being truncated now; the next prune finishes it.
            let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
            if busy != 0 {
                tracing::debug!("Alert log checkpoint deferred: a reader holds the log.");
            }
        }
        Ok((alerts, calls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_alert(tenant: &str, call: &str, severity: Severity, wall: i64) -> NewAlert {
        NewAlert {
            tenant: tenant.into(),
            call_id: call.into(),
            kind: AlertKind::SuspectedClone,
            severity,
            p_spoof: 0.8,
            threshold: 0.6,
            audio_ms: 1_500,
            wall_time_ms: wall,
            evidence: vec![WindowScore {
                seq: 0,
                start_ms: 0,
                end_ms: 1_000,
                p_spoof: 0.8,
                fused: 0.8,
                allowed_voice: false,
            }],
            model: "m@1".into(),
            transcript_snippet: Redacted::default(),
            risk: 0.8,
            cues: Vec::new(),
            metadata: CallMeta::default(),
            voice_similarity: None,
        }
    }

    #[test]
    fn sequences_grow_survive_reopen_and_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/alerts.db");
        let log = AlertLog::open(&path).unwrap();
        let a = log
            .append(new_alert("t", "c1", Severity::Warning, 10))
            .unwrap();
        let b = log
            .append(new_alert("t", "c1", Severity::Critical, 20))
            .unwrap();
        assert!(b.sequence > a.sequence && a.sequence > 0);
        assert_ne!(a.id, b.id);
        drop(log);
        let log = AlertLog::open(&path).unwrap();
        assert_eq!(log.last_sequence().unwrap(), b.sequence);
        assert_eq!(log.prune(15).unwrap(), (1, 0));
        let c = log
            .append(new_alert("t", "c1", Severity::Info, 30))
            .unwrap();
        assert!(c.sequence > b.sequence);
        let all = log.after("t", &AlertFilter::default(), 0, 100).unwrap();
        assert_eq!(all, vec![b, c]);
    }

    /// Retention leaves nothing of what it deleted in the database file or its write-ahead log.
    #[test]
    fn pruned_records_leave_no_trace_in_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let log = AlertLog::open(&path).unwrap();
        let marker = "call-4c1d-pruned-marker";
        let old = log
            .append(new_alert("t", marker, Severity::Warning, 10))
            .unwrap();
        log.acknowledge("t", &old.id, "agent", "note-7f3e-pruned-marker", 11)
            .unwrap()
            .unwrap();
        log.put_call("t", marker, 10, &serde_json::json!({"note": marker}))
            .unwrap();
        log.append(new_alert("t", "kept", Severity::Warning, 100))
            .unwrap();
        let holds = |what: &str| {
            ["", "-wal"].iter().any(|suffix| {
                let file = dir.path().join(format!("a.db{suffix}"));
                let bytes = std::fs::read(file).unwrap_or_default();
                bytes.windows(what.len()).any(|w| w == what.as_bytes())
            })
        };
        assert!(
            holds(marker),
            "the marker should be on disk before retention"
        );
        assert!(holds("note-7f3e-pruned-marker"));
        assert_eq!(log.prune(50).unwrap(), (1, 1));
        assert!(
            !holds(marker),
            "a pruned record is still readable from the files"
        );
        assert!(
            !holds("note-7f3e-pruned-marker"),
            "a pruned note is still in the files"
        );
        assert!(log.acks_after(0, 10).unwrap().is_empty());
        assert!(holds("kept"));
        assert_eq!(
            log.after("t", &AlertFilter::default(), 0, 10)
                .unwrap()
                .len(),
            1
        );
    }

    /// With a key, transcript text, cues and notes are nowhere in the files in clear; reads
    /// give them back; without the key (or with another) reading says why instead.
    #[test]
    fn transcripts_are_encrypted_at_rest_with_the_store_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = |name: &str, hex: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, hex).unwrap();
            p
        };
        let store = crate::config::StoreConfig {
            path: dir.path().join("a.db"),
            encryption_key_file: Some(key("k1", &"3c".repeat(32))),
            ..Default::default()
        };
        let log = AlertLog::open_store(&store).unwrap();
        let mut alert = new_alert("t", "c1", Severity::Critical, 10);
        alert.transcript_snippet = crate::transcribe::redact("please wire the money today").0;
        let logged = log.append(alert).unwrap();
        log.acknowledge("t", &logged.id, "agent-7", "caller hung up when asked", 20)
            .unwrap()
            .unwrap();
        log.put_call(
            "t",
            "c1",
            30,
            &serde_json::json!({"transcript": [{"text": "my mother's maiden name"}]}),
        )
        .unwrap();
        drop(log);
        let mut files = Vec::new();
        for suffix in ["", "-wal"] {
            files.extend(
                std::fs::read(dir.path().join(format!("a.db{suffix}"))).unwrap_or_default(),
            );
        }
        for secret in ["wire the money", "hung up", "maiden name"] {
            assert!(
                !files.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} is in the files in clear"
            );
        }
        let log = AlertLog::open_store(&store).unwrap();
        let back = log.after("t", &AlertFilter::default(), 0, 10).unwrap();
        assert_eq!(
            back[0].transcript_snippet.as_str(),
            "please wire the money today"
        );
        assert_eq!(
            back[0].acknowledged.as_ref().unwrap().note.as_str(),
            "caller hung up when asked"
        );
        let call: serde_json::Value = log.get_call("t", "c1").unwrap().unwrap();
        assert_eq!(call["transcript"][0]["text"], "my mother's maiden name");
        drop(log);
        let unkeyed = AlertLog::open(&store.path).unwrap();
        let e = unkeyed
            .after("t", &AlertFilter::default(), 0, 10)
            .unwrap_err();
        assert!(e.to_string().contains("encryption_key_file"), "{e}");
        drop(unkeyed);
        let other = crate::config::StoreConfig {
            encryption_key_file: Some(key("k2", &"4d".repeat(32))),
            ..store
        };
        let e = AlertLog::open_store(&other)
            .unwrap()
            .get_call::<serde_json::Value>("t", "c1")
            .unwrap_err();
        assert!(e.to_string().contains("does not open with this key"), "{e}");
    }

    /// The sequence is the log's, not the clock's: a wall clock stepped backwards (NTP, a VM
    /// restored) never reorders alerts.
    #[test]
    fn a_clock_stepped_backwards_does_not_reorder_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let log = AlertLog::open(&dir.path().join("a.db")).unwrap();
        let walls = [5_000, 9_000, 1_000, 7_000, 2_000];
        let logged: Vec<_> = walls
            .iter()
            .enumerate()
            .map(|(i, w)| {
                log.append(new_alert("t", &format!("c{i}"), Severity::Warning, *w))
                    .unwrap()
            })
            .collect();
        let replay = log.after("t", &AlertFilter::default(), 0, 10).unwrap();
        assert_eq!(replay, logged);
        assert!(replay.windows(2).all(|p| p[1].sequence > p[0].sequence));
        let calls: Vec<_> = replay.iter().map(|a| a.call_id.as_str()).collect();
        assert_eq!(calls, ["c0", "c1", "c2", "c3", "c4"]);
    }

    #[test]
    fn replay_filters_by_tenant_call_and_severity() {
        let dir = tempfile::tempdir().unwrap();
        let log = AlertLog::open(&dir.path().join("a.db")).unwrap();
        log.append(new_alert("a", "c1", Severity::Warning, 1))
            .unwrap();
        log.append(new_alert("b", "c1", Severity::Critical, 2))
            .unwrap();
        log.append(new_alert("a", "c2", Severity::Critical, 3))
            .unwrap();
        let seqs = |f: AlertFilter, after| {
            log.after("a", &f, after, 10)
                .unwrap()
                .iter()
                .map(|a| (a.call_id.clone(), a.sequence))
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(AlertFilter::default(), 0).len(), 2);
        assert_eq!(seqs(AlertFilter::default(), 1), vec![("c2".into(), 3)]);
        let only_c1 = AlertFilter {
            call_id: Some("c1".into()),
            min_severity: None,
        };
        assert_eq!(seqs(only_c1, 0), vec![("c1".into(), 1)]);
        let critical = AlertFilter {
            call_id: None,
            min_severity: Some(Severity::Critical),
        };
        assert_eq!(seqs(critical, 0), vec![("c2".into(), 3)]);
    }

    #[test]
    fn ended_calls_are_found_by_tenant_and_id() {
        let dir = tempfile::tempdir().unwrap();
        let log = AlertLog::open(&dir.path().join("a.db")).unwrap();
        log.put_call("a", "c1", 5, &serde_json::json!({"n": 1}))
            .unwrap();
        log.put_call("a", "c1", 9, &serde_json::json!({"n": 2}))
            .unwrap();
        let got: Option<serde_json::Value> = log.get_call("a", "c1").unwrap();
        assert_eq!(got.unwrap()["n"], 2);
        let other: Option<serde_json::Value> = log.get_call("b", "c1").unwrap();
        assert!(other.is_none());
    }

    #[test]
    fn calls_ended_since_span_tenants_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let log = AlertLog::open(&dir.path().join("a.db")).unwrap();
        for (tenant, call, ended) in [("a", "late", 30), ("b", "mid", 20), ("a", "early", 10)] {
            log.put_call(tenant, call, ended, &serde_json::json!({ "id": call }))
                .unwrap();
        }
        let ids = |since, limit| -> Vec<String> {
            log.calls_ended_since::<serde_json::Value>(since, limit)
                .unwrap()
                .into_iter()
                .map(|v| v["id"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(ids(0, 10), ["early", "mid", "late"]);
        assert_eq!(ids(20, 10), ["mid", "late"]);
        assert_eq!(ids(0, 2), ["early", "mid"]);
        assert!(ids(31, 10).is_empty());
    }
}

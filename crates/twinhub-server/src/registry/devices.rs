//! Devices: registration, keys (hashed, rotatable with an overlap), enable/disable, binding to twins, last-seen.

use super::*;

impl Registry {
    /// Creates a device and returns it with its key (the only time the key
    /// exists outside the caller's hands).
    pub async fn create_device(
        &self,
        tenant: &str,
        id: &str,
        twin_id: Option<String>,
    ) -> Result<(Arc<Device>, String), RegistryError> {
        self.create_device_with(tenant, id, twin_id, "reject").await
    }

    pub async fn create_device_with(
        &self,
        tenant: &str,
        id: &str,
        twin_id: Option<String>,
        unknown_telemetry: &str,
    ) -> Result<(Arc<Device>, String), RegistryError> {
        check_unknown_policy(unknown_telemetry)?;
        check_id("id", id).map_err(|e| RegistryError::Invalid {
            field: e.field,
            rule: e.rule.into(),
        })?;
        if let Some(t) = &twin_id {
            check_id("twin_id", t).map_err(|e| RegistryError::Invalid {
                field: e.field,
                rule: e.rule.into(),
            })?;
        }
        let key = auth::random_secret(24);
        let row = DeviceRow {
            id: id.into(),
            tenant: tenant.into(),
            twin_id,
            key_hash: auth::digest(&key).to_vec(),
            enabled: true,
            created_at: self.now_us(),
            last_seen: None,
            unknown_telemetry: unknown_telemetry.to_string(),
            previous_key_hash: None,
            previous_key_until: None,
        };
        let dev = Arc::new(Device::new(row.clone()));
        let d = dev.clone();
        self.store
            .write_cached(
                &self.devices,
                move |tx| rows::insert_device(tx, &row),
                move |devices| {
                    devices.insert(d.row.id.clone(), d);
                },
            )
            .await?;
        Ok((dev, key))
    }

    pub fn device(&self, id: &str) -> Option<Arc<Device>> {
        self.devices.read().expect("devices").get(id).cloned()
    }

    /// A device of this tenant (None for another tenant's: callers answer
    /// 404 either way).
    pub fn device_in(&self, tenant: &str, id: &str) -> Option<Arc<Device>> {
        self.device(id).filter(|d| d.row.tenant == tenant)
    }

    pub fn devices_of(&self, tenant: &str, after: Option<&str>, limit: usize) -> Vec<Arc<Device>> {
        let map = self.devices.read().expect("devices");
        let mut v: Vec<Arc<Device>> = map
            .values()
            .filter(|d| d.row.tenant == tenant && after.is_none_or(|a| d.row.id.as_str() > a))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.row.id.cmp(&b.row.id));
        v.truncate(limit);
        v
    }

    pub fn device_count(&self, tenant: &str) -> usize {
        self.devices
            .read()
            .expect("devices")
            .values()
            .filter(|d| d.row.tenant == tenant)
            .count()
    }

    pub fn all_devices(&self) -> Vec<Arc<Device>> {
        self.devices
            .read()
            .expect("devices")
            .values()
            .cloned()
            .collect()
    }

    pub async fn update_device(
        &self,
        current: &Device,
        enabled: Option<bool>,
        twin_id: Option<Option<String>>,
        unknown_telemetry: Option<String>,
    ) -> Result<Arc<Device>, RegistryError> {
        let mut row = current.row.clone();
        if let Some(u) = unknown_telemetry {
            check_unknown_policy(&u)?;
            row.unknown_telemetry = u;
        }
        if let Some(e) = enabled {
            row.enabled = e;
        }
        if let Some(t) = twin_id {
            if let Some(t) = &t {
                check_id("twin_id", t).map_err(|e| RegistryError::Invalid {
                    field: e.field,
                    rule: e.rule.into(),
                })?;
            }
            row.twin_id = t;
        }
        self.replace_device(current, row).await
    }

    /// Gives a device a new key; the old one keeps working for `overlap_us`
    /// (0: revoked at once). Returns the new key, shown once.
    pub async fn rotate_device_key(
        &self,
        current: &Device,
        overlap_us: i64,
    ) -> Result<(Arc<Device>, String), RegistryError> {
        let key = auth::random_secret(24);
        let mut row = current.row.clone();
        row.previous_key_hash = (overlap_us > 0).then(|| row.key_hash.clone());
        row.previous_key_until = (overlap_us > 0).then(|| self.now_us() + overlap_us);
        row.key_hash = auth::digest(&key).to_vec();
        Ok((self.replace_device(current, row).await?, key))
    }

    pub(super) async fn replace_device(
        &self,
        current: &Device,
        row: DeviceRow,
    ) -> Result<Arc<Device>, RegistryError> {
        let dev = Arc::new(Device::new(row.clone()));
        dev.last_seen
            .store(current.last_seen.load(Ordering::Relaxed), Ordering::Relaxed);
        dev.persisted
            .store(current.persisted.load(Ordering::Relaxed), Ordering::Relaxed);
        dev.active
            .store(current.active.load(Ordering::Relaxed), Ordering::Relaxed);
        dev.connected
            .store(current.connected.load(Ordering::Relaxed), Ordering::Relaxed);
        let d = dev.clone();
        self.store
            .write_cached(
                &self.devices,
                move |tx| rows::update_device(tx, &row),
                move |devices| {
                    devices.insert(d.row.id.clone(), d);
                },
            )
            .await?;
        Ok(dev)
    }

    pub async fn delete_device(&self, id: &str) -> Result<bool, RegistryError> {
        let (i1, i2) = (id.to_string(), id.to_string());
        Ok(self
            .store
            .write_cached(
                &self.devices,
                move |tx| rows::delete_device(tx, &i1),
                move |devices| {
                    devices.remove(&i2);
                },
            )
            .await?)
    }

    /// Checks a device's credentials in constant time. An unknown device
    /// and a wrong key are indistinguishable; disabled is told only after
    /// the key verified.
    pub fn authenticate_device(&self, id: &str, key: &str) -> Result<Arc<Device>, DeviceAuthError> {
        let dev = self.device(id);
        let stored: &[u8] = dev
            .as_ref()
            .map(|d| d.row.key_hash.as_slice())
            .unwrap_or(&[0u8; 32]);
        let mut ok = auth::verify_digest(key, stored);
        if let Some(d) = &dev {
            if let (Some(prev), Some(until)) = (&d.row.previous_key_hash, d.row.previous_key_until)
            {
                ok |= until > self.now_us() && auth::verify_digest(key, prev);
            }
        }
        match dev {
            Some(d) if ok => {
                if d.row.enabled {
                    Ok(d)
                } else {
                    Err(DeviceAuthError::Disabled)
                }
            }
            _ => Err(DeviceAuthError::BadCredentials),
        }
    }

    /// Persists the last-seen times that moved since they were last
    /// written (called periodically, not per message), a small slice of
    /// devices per transaction with a pause between: 10,000 rows in one
    /// transaction held the writer ~90 ms every 30 s, and slices of 256
    /// sent back to back still added ~6 ms to every ingest group they
    /// shared for a fifth of a second. Unpaced at shutdown, when nothing
    /// else is written. Returns how many were written.
    pub async fn persist_last_seen(&self, paced: bool) -> Result<usize, RegistryError> {
        /// Rows per transaction: about a millisecond of the writer.
        const SLICE: usize = 64;
        /// Between slices, so ingest groups commit without one.
        const PAUSE: std::time::Duration = std::time::Duration::from_millis(2);
        let moved: Vec<(Arc<Device>, i64)> = self
            .all_devices()
            .into_iter()
            .filter_map(|d| {
                let t = d.last_seen.load(Ordering::Relaxed);
                (t > d.persisted.load(Ordering::Relaxed)).then_some((d, t))
            })
            .collect();
        for (i, slice) in moved.chunks(SLICE).enumerate() {
            if paced && i > 0 {
                tokio::time::sleep(PAUSE).await;
            }
            let rows: Vec<(String, i64)> =
                slice.iter().map(|(d, t)| (d.row.id.clone(), *t)).collect();
            self.store
                .write(move |ctx| rows::set_last_seen(ctx.tx, &rows))
                .await?;
            for (d, t) in slice {
                d.persisted.fetch_max(*t, Ordering::Relaxed);
            }
        }
        Ok(moved.len())
    }
}

//! PyO3 bindings of `pki`: every failure is a ValueError carrying `pki`'s reason.

use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::pki::{self, ParsedCert};

fn seconds(value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| PyValueError::new_err(format!("not a duration in seconds: {value}")))
}

fn text(pem: &[u8], what: &str) -> PyResult<String> {
    String::from_utf8(pem.to_vec()).map_err(|_| PyValueError::new_err(format!("{what}: not UTF-8")))
}

/// One parsed X.509 certificate.
#[pyclass(frozen, name = "Certificate", module = "ambient_fast._native")]
pub struct PyCertificate {
    inner: ParsedCert,
}

#[pymethods]
impl PyCertificate {
    #[getter]
    fn der<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.der)
    }

    #[getter]
    fn pem(&self) -> String {
        self.inner.pem()
    }

    #[getter]
    fn serial_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.serial)
    }

    #[getter]
    fn not_before(&self) -> i64 {
        self.inner.not_before
    }

    #[getter]
    fn not_after(&self) -> i64 {
        self.inner.not_after
    }

    #[getter]
    fn uri_sans(&self) -> Vec<String> {
        self.inner.uri_sans.clone()
    }

    #[getter]
    fn spki<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.spki)
    }

    fn __eq__(&self, other: &Self) -> bool {
        self.inner.der == other.inner.der
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.inner.der.hash(&mut hasher);
        hasher.finish()
    }
}

#[pyfunction]
fn parse_certificates(pem: &[u8]) -> PyResult<Vec<PyCertificate>> {
    let parsed = pki::parse_certificates(pem).map_err(PyValueError::new_err)?;
    Ok(parsed
        .into_iter()
        .map(|inner| PyCertificate { inner })
        .collect())
}

#[pyfunction]
fn private_key_spki<'py>(py: Python<'py>, key_pem: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let spki =
        pki::private_key_spki(&text(key_pem, "private key")?).map_err(PyValueError::new_err)?;
    Ok(PyBytes::new(py, &spki))
}

#[pyfunction]
fn verify_client_chain(
    leaf: &PyCertificate,
    intermediates: Vec<PyRef<'_, PyCertificate>>,
    roots: Vec<PyRef<'_, PyCertificate>>,
    now: f64,
) -> PyResult<()> {
    let intermediates: Vec<ParsedCert> = intermediates.iter().map(|c| c.inner.clone()).collect();
    let roots: Vec<ParsedCert> = roots.iter().map(|c| c.inner.clone()).collect();
    pki::verify_client_chain(&leaf.inner, &intermediates, &roots, seconds(now)?)
        .map_err(PyValueError::new_err)
}

#[pyfunction]
fn workload_key_and_csr<'py>(
    py: Python<'py>,
    uri: &str,
) -> PyResult<(Bound<'py, PyBytes>, String)> {
    let (key_pem, csr_pem) = pki::workload_key_and_csr(uri).map_err(PyValueError::new_err)?;
    Ok((PyBytes::new(py, key_pem.as_bytes()), csr_pem))
}

/// A root CA signing workload certificates locally (FAKE_CA).
#[pyclass(frozen, module = "ambient_fast._native")]
pub struct LocalCa {
    inner: pki::LocalCa,
}

#[pymethods]
impl LocalCa {
    #[staticmethod]
    fn create(trust_domain: &str, ttl_seconds: f64) -> PyResult<Self> {
        let inner = pki::LocalCa::create(trust_domain, seconds(ttl_seconds)?)
            .map_err(PyValueError::new_err)?;
        Ok(Self { inner })
    }

    #[staticmethod]
    fn load(cert_pem: &[u8], key_pem: &[u8]) -> PyResult<Self> {
        let inner = pki::LocalCa::load(
            &text(cert_pem, "CA certificate")?,
            &text(key_pem, "CA key")?,
        )
        .map_err(PyValueError::new_err)?;
        Ok(Self { inner })
    }

    #[getter]
    fn root_pem<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.root_pem().as_bytes())
    }

    #[getter]
    fn key_pem<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.key_pem().as_bytes())
    }

    fn sign_csr<'py>(
        &self,
        py: Python<'py>,
        csr_pem: &str,
        identity: &str,
        ttl_seconds: f64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let leaf = self
            .inner
            .sign_csr(csr_pem, identity, seconds(ttl_seconds)?)
            .map_err(PyValueError::new_err)?;
        Ok(PyBytes::new(py, leaf.as_bytes()))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCertificate>()?;
    m.add_class::<LocalCa>()?;
    m.add_function(wrap_pyfunction!(parse_certificates, m)?)?;
    m.add_function(wrap_pyfunction!(private_key_spki, m)?)?;
    m.add_function(wrap_pyfunction!(verify_client_chain, m)?)?;
    m.add_function(wrap_pyfunction!(workload_key_and_csr, m)?)?;
    Ok(())
}

//! TLS towards upstreams, with nginx's own SSL layer (OpenSSL as nginx was
//! built with it): a client context per location, made when the
//! configuration loads, and the handshake, SNI and verification per
//! connection.

use core::ffi::CStr;
use core::mem;
use core::ptr::{self, NonNull};

use foreign_types::ForeignTypeRef;
use ngx::ffi::{
    ngx_conf_t, ngx_connection_handler_pt, ngx_connection_t, ngx_int_t, ngx_pcalloc,
    ngx_pool_cleanup_add, ngx_ssl_certificate, ngx_ssl_check_host, ngx_ssl_ciphers,
    ngx_ssl_cleanup_ctx, ngx_ssl_connection_certificate, ngx_ssl_create, ngx_ssl_create_connection,
    ngx_ssl_handshake, ngx_ssl_t, ngx_ssl_trusted_certificate, ngx_str_t, NGX_SSL_TLSv1_2,
    NGX_SSL_TLSv1_3, SSL_ctrl, SSL_get_verify_result, TLSEXT_NAMETYPE_host_name,
    X509_verify_cert_error_string, NGX_AGAIN, NGX_OK, NGX_SSL_BUFFER, NGX_SSL_CLIENT,
    SSL_CTRL_SET_TLSEXT_HOSTNAME, X509_V_OK,
};

use crate::ngx_io::{conf_error, ConnectionRef, NgxError};

/// What a location configures for TLS to its upstream.
pub struct TlsSettings<'a> {
    pub verify: bool,
    pub trusted_certificate: Option<&'a [u8]>,
    pub certificate: Option<&'a [u8]>,
    pub certificate_key: Option<&'a [u8]>,
}

/// An `SSL_CTX` for upstream connections, freed with the configuration.
#[derive(Clone, Copy)]
pub struct ClientTls(NonNull<ngx_ssl_t>);

impl ClientTls {
    /// Creates the context as `proxy_ssl_*` does: TLS 1.2 and 1.3, default
    /// ciphers, the CA bundle for verification, the client certificate.
    ///
    /// # Safety
    /// `cf` must be the configuration nginx is loading.
    pub unsafe fn create(cf: *mut ngx_conf_t, settings: &TlsSettings) -> Result<Self, NgxError> {
        // SAFETY: every object is allocated in the configuration pool, and
        // the cleanup frees the SSL_CTX with it.
        unsafe {
            let pool = (*cf).pool;
            let ssl: *mut ngx_ssl_t = ngx_pcalloc(pool, mem::size_of::<ngx_ssl_t>()).cast();
            let ssl = NonNull::new(ssl).ok_or(NgxError("ngx_pcalloc"))?;
            (*ssl.as_ptr()).log = (*cf).log;
            let protocols = (NGX_SSL_TLSv1_2 | NGX_SSL_TLSv1_3) as _;
            if ngx_ssl_create(ssl.as_ptr(), protocols, ptr::null_mut()) != NGX_OK as ngx_int_t {
                return Err(NgxError("ngx_ssl_create"));
            }
            let cln = ngx_pool_cleanup_add(pool, 0);
            if cln.is_null() {
                return Err(NgxError("ngx_pool_cleanup_add"));
            }
            (*cln).handler = Some(ngx_ssl_cleanup_ctx);
            (*cln).data = ssl.as_ptr().cast();
            let mut ciphers = conf_str(cf, b"DEFAULT")?;
            if ngx_ssl_ciphers(cf, ssl.as_ptr(), &mut ciphers, 0) != NGX_OK as ngx_int_t {
                return Err(NgxError("ngx_ssl_ciphers"));
            }
            match (settings.certificate, settings.certificate_key) {
                (Some(cert), Some(key)) => {
                    let (mut cert, mut key) = (conf_str(cf, cert)?, conf_str(cf, key)?);
                    let rc =
                        ngx_ssl_certificate(cf, ssl.as_ptr(), &mut cert, &mut key, ptr::null_mut());
                    if rc != NGX_OK as ngx_int_t {
                        return Err(NgxError("ngx_ssl_certificate"));
                    }
                }
                (Some(_), None) => {
                    conf_error(
                        cf,
                        "no \"websocket_ssl_certificate_key\" for \"websocket_ssl_certificate\"",
                    );
                    return Err(NgxError("websocket_ssl_certificate_key"));
                }
                _ => {}
            }
            if settings.verify {
                let Some(trusted) = settings.trusted_certificate else {
                    conf_error(
                        cf,
                        "no \"websocket_ssl_trusted_certificate\" for \"websocket_ssl_verify\"",
                    );
                    return Err(NgxError("websocket_ssl_trusted_certificate"));
                };
                let mut trusted = conf_str(cf, trusted)?;
                if ngx_ssl_trusted_certificate(cf, ssl.as_ptr(), &mut trusted, 1)
                    != NGX_OK as ngx_int_t
                {
                    return Err(NgxError("ngx_ssl_trusted_certificate"));
                }
            }
            Ok(ClientTls(ssl))
        }
    }
}

impl ClientTls {
    /// Identifies the context (connections made with different contexts
    /// never share a pool).
    pub fn id(&self) -> usize {
        self.0.as_ptr() as usize
    }
}

/// A copy of `s` in the configuration pool (nginx keeps pointers to it).
///
/// # Safety
/// `cf` must be the configuration nginx is loading.
/// It is zero-terminated: nginx hands absolute paths to OpenSSL as C strings.
unsafe fn conf_str(cf: *mut ngx_conf_t, s: &[u8]) -> Result<ngx_str_t, NgxError> {
    // SAFETY: guaranteed by the caller: the configuration's pool is live.
    unsafe { pool_str((*cf).pool, s) }
}

/// Where a TLS handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsHandshake {
    Done,
    /// nginx drives it on the connection's events and calls the handler
    /// given to [`start`] when it ends (or its timer fires).
    Again,
    Failed,
}

/// A client certificate and its key for one connection: file names (relative
/// to nginx's configuration prefix), or `data:` followed by the PEM text.
pub struct ConnCert {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// Starts TLS on a connected upstream socket, with `sni` as the server name
/// (none for an IP address), presenting `cert` if the upstream asks for one.
pub fn start(
    tls: ClientTls,
    c: &ConnectionRef,
    sni: Option<&CStr>,
    cert: Option<&ConnCert>,
    on_done: ngx_connection_handler_pt,
) -> TlsHandshake {
    let c = c.as_ptr();
    // SAFETY: `c` is a live, connected upstream connection with a pool; the
    // SNI string is copied by OpenSSL.
    unsafe {
        let flags = (NGX_SSL_BUFFER | NGX_SSL_CLIENT) as _;
        if ngx_ssl_create_connection(tls.0.as_ptr(), c, flags) != NGX_OK as ngx_int_t {
            return TlsHandshake::Failed;
        }
        if let Some(cert) = cert {
            if use_certificate(c, cert).is_err() {
                return TlsHandshake::Failed;
            }
        }
        if let Some(name) = sni {
            let ssl = (*(*c).ssl).connection;
            let host_name = TLSEXT_NAMETYPE_host_name as _;
            if SSL_ctrl(
                ssl,
                SSL_CTRL_SET_TLSEXT_HOSTNAME as _,
                host_name,
                name.as_ptr().cast_mut().cast(),
            ) == 0
            {
                return TlsHandshake::Failed;
            }
        }
        match ngx_ssl_handshake(c) {
            rc if rc == NGX_OK as ngx_int_t => TlsHandshake::Done,
            rc if rc == NGX_AGAIN as ngx_int_t => {
                (*(*c).ssl).handler = on_done;
                TlsHandshake::Again
            }
            _ => TlsHandshake::Failed,
        }
    }
}

/// Loads `cert` into the connection's SSL object (nginx logs a failure).
///
/// # Safety
/// `c` must be a live connection with a pool, whose SSL object was just
/// created.
unsafe fn use_certificate(c: *mut ngx_connection_t, cert: &ConnCert) -> Result<(), NgxError> {
    // SAFETY: guaranteed by the caller; the names are copied into the
    // connection's pool, zero-terminated (OpenSSL reads file names as C
    // strings), and nginx reads them only during the call.
    unsafe {
        let pool = (*c).pool;
        let mut name = pool_str(pool, &cert.cert)?;
        let mut key = pool_str(pool, &cert.key)?;
        #[cfg(nginx1_27_4)]
        let rc = ngx_ssl_connection_certificate(
            c,
            pool,
            &mut name,
            &mut key,
            ptr::null_mut(),
            ptr::null_mut(),
        );
        #[cfg(not(nginx1_27_4))]
        let rc = ngx_ssl_connection_certificate(c, pool, &mut name, &mut key, ptr::null_mut());
        if rc != NGX_OK as ngx_int_t {
            return Err(NgxError("ngx_ssl_connection_certificate"));
        }
    }
    Ok(())
}

/// A zero-terminated copy of `s` in `pool`.
///
/// # Safety
/// `pool` must be a live pool.
unsafe fn pool_str(pool: *mut ngx::ffi::ngx_pool_t, s: &[u8]) -> Result<ngx_str_t, NgxError> {
    // SAFETY: guaranteed by the caller; one more byte is allocated for the
    // terminator and the length excludes it.
    unsafe {
        let data: *mut u8 = ngx::ffi::ngx_pnalloc(pool, s.len() + 1).cast();
        if data.is_null() {
            return Err(NgxError("ngx_pnalloc"));
        }
        ptr::copy_nonoverlapping(s.as_ptr(), data, s.len());
        *data.add(s.len()) = 0;
        Ok(ngx_str_t { len: s.len(), data })
    }
}

/// Whether the handshake that nginx drove has completed.
pub fn handshaked(c: &ConnectionRef) -> bool {
    let c = c.as_ptr();
    // SAFETY: a live connection; `ssl` is set once `start` succeeded.
    unsafe { !(*c).ssl.is_null() && (*(*c).ssl).handshaked() != 0 }
}

/// Checks the upstream's certificate chain and that it names `name`.
pub fn verify(c: &ConnectionRef, name: &[u8]) -> Result<(), String> {
    let c = c.as_ptr();
    // SAFETY: a live connection after a completed handshake; the name is
    // only read by nginx.
    unsafe {
        let rc = SSL_get_verify_result((*(*c).ssl).connection);
        if rc != X509_V_OK as _ {
            let why = CStr::from_ptr(X509_verify_cert_error_string(rc));
            return Err(format!(
                "upstream SSL certificate verify error: ({rc}:{})",
                why.to_string_lossy()
            ));
        }
        let mut name = ngx_str_t {
            len: name.len(),
            data: name.as_ptr().cast_mut(),
        };
        if ngx_ssl_check_host(c, &mut name) != NGX_OK as ngx_int_t {
            return Err(format!(
                "upstream SSL certificate does not match \"{}\"",
                String::from_utf8_lossy(name.as_bytes())
            ));
        }
    }
    Ok(())
}

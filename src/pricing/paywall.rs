//! The paywall page browsers get with a 402: the price per accepted network and asset, and a
//! small self-contained app (`paywall/app.js`, inline, no external assets) that connects an
//! injected wallet (EIP-6963, else `window.ethereum`), signs the EIP-3009 authorization the
//! official clients sign, retries the request with `PAYMENT-SIGNATURE` and shows the paid
//! response. The page is prepared once per route and config load, split around the one
//! thing each request changes: its terms (the `PAYMENT-REQUIRED` value, base64, in a data
//! attribute). It is served under a Content-Security-Policy that allows exactly its own
//! script and style, by hash.

use base64::Engine;
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::{format_units, Requirement, Scheme};

const APP_JS: &str = include_str!("paywall/app.js");
const STYLE_CSS: &str = include_str!("paywall/style.css");
const APP_HTML: &str = include_str!("paywall/app.html");
const PAGE_HTML: &str = include_str!("paywall/page.html");
const TERMS: &str = "{{terms}}";
/// The script is the same on every route's page: hashed once, not per route and load.
static APP_JS_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| hash(APP_JS));

/// How an operator dresses the page (`levy.paywall`, a route's `paywall`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Look {
    /// The heading and the document title; default "Payment required".
    pub title: Option<String>,
    /// An image shown beside the title (its origin is allowed by the page's CSP).
    pub logo_url: Option<String>,
    /// Buttons and focus rings, `#rgb` or `#rrggbb`.
    pub accent_color: Option<String>,
    pub background_color: Option<String>,
    /// An operator's page instead of the built-in one: HTML with `{{app}}` and `{{script}}`
    /// (required) and `{{title}}`, `{{logo}}`, `{{description}}`, `{{style}}` placeholders.
    pub template: Option<String>,
}

/// Why a template cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PaywallError {
    #[error("the template has no {0} placeholder")]
    Missing(&'static str),
}

/// A route's page with a wallet, split around each request's terms.
#[derive(Debug, Clone)]
pub struct WalletPage {
    prefix: Bytes,
    suffix: Bytes,
    csp: String,
}

impl WalletPage {
    /// Prepares the page for `requirements` (one `accepts` entry each, in order).
    pub fn new(
        requirements: &[Requirement],
        description: &str,
        look: &Look,
    ) -> Result<Self, PaywallError> {
        let template = look.template.as_deref().unwrap_or(PAGE_HTML);
        for needed in ["{{app}}", "{{script}}"] {
            if !template.contains(needed) {
                return Err(PaywallError::Missing(needed));
            }
        }
        let style = format!(
            ":root{{--accent:{};--bg:{}}}\n{STYLE_CSS}",
            look.accent_color.as_deref().unwrap_or("#1f5fbf"),
            look.background_color.as_deref().unwrap_or("#f3f5f8"),
        );
        let title = html_escape(look.title.as_deref().unwrap_or("Payment required"));
        let logo = look.logo_url.as_deref().map_or(String::new(), |url| {
            format!("<img src=\"{}\" alt=\"\">", html_escape(url))
        });
        let description = if description.is_empty() {
            String::new()
        } else {
            format!("<p class=\"description\">{}</p>", html_escape(description))
        };
        let app = APP_HTML.replace("{{prices}}", &prices(requirements));
        let page = template
            .replace("{{style}}", &format!("<style>{style}</style>"))
            .replace("{{script}}", &format!("<script>{APP_JS}</script>"))
            .replace("{{title}}", &title)
            .replace("{{logo}}", &logo)
            .replace("{{description}}", &description)
            .replace("{{app}}", &app);
        let (prefix, suffix) = page
            .split_once(TERMS)
            .ok_or(PaywallError::Missing("{{terms}}"))?;
        let images = look
            .logo_url
            .as_deref()
            .and_then(origin)
            .unwrap_or_default();
        let csp = format!(
            "default-src 'none'; script-src '{}'; style-src '{}'; img-src data: {images}; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            *APP_JS_HASH,
            hash(&style),
        );
        Ok(Self {
            prefix: Bytes::copy_from_slice(prefix.as_bytes()),
            suffix: Bytes::copy_from_slice(suffix.as_bytes()),
            csp,
        })
    }

    /// The page for one request whose `PAYMENT-REQUIRED` value is `terms`.
    pub fn render(&self, terms: &str) -> Bytes {
        let mut page = BytesMut::with_capacity(self.prefix.len() + terms.len() + self.suffix.len());
        page.extend_from_slice(&self.prefix);
        // Base64: nothing in it can leave the attribute.
        page.extend_from_slice(terms.as_bytes());
        page.extend_from_slice(&self.suffix);
        page.freeze()
    }

    /// The `Content-Security-Policy` to serve it under.
    pub fn csp(&self) -> &str {
        &self.csp
    }
}

/// `'sha256-…'` of an inline element's text, as CSP names it.
fn hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// `scheme://host[:port]` of an absolute URL.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty()).then(|| format!("{scheme}://{host}"))
}

/// One choice per `accepts` entry; the app enables those a browser wallet can pay.
fn prices(requirements: &[Requirement]) -> String {
    let mut out = String::new();
    for (i, r) in requirements.iter().enumerate() {
        let asset = html_escape(&r.asset_name.to_ascii_uppercase());
        let network = html_escape(&r.network_name);
        let (before, after) = match r.scheme {
            Scheme::Exact => ("", ""),
            Scheme::Upto { .. } => ("up to ", ", metered: pay from code"),
            Scheme::Batch { .. } => ("", " per call from a deposit: pay from code"),
        };
        out.push_str(&format!(
            "<div class=\"choice\" data-accept=\"{i}\" data-network=\"{network}\" data-asset=\"{asset}\" data-decimals=\"{}\">\
<input type=\"radio\" name=\"x402-accept\" id=\"x402-accept-{i}\" disabled>\
<label for=\"x402-accept-{i}\">{before}<span class=\"price\">{} {asset}</span> on {network}{after}</label></div>\n",
            r.decimals,
            format_units(r.amount, r.decimals),
        ));
    }
    out
}

/// `s` with the five HTML-special characters escaped.
pub(super) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::challenge::tests::requirement;

    #[test]
    fn the_page_splices_each_requests_terms_and_escapes_what_the_config_says() {
        let look = Look {
            title: Some("Acme <data>".into()),
            logo_url: Some("https://cdn.acme.example/logo.png?v=1".into()),
            accent_color: Some("#aa0000".into()),
            ..Look::default()
        };
        let page = WalletPage::new(&[requirement(None)], "<script>alert(1)</script>", &look)
            .expect("page");
        let html = String::from_utf8(page.render("eyJ0ZXJtcyI6MX0=").to_vec()).expect("utf-8");
        assert!(html.contains("data-terms=\"eyJ0ZXJtcyI6MX0=\""));
        assert!(html.contains("<title>Acme &lt;data&gt;</title>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("0.001 USDC"));
        assert!(html.contains("--accent:#aa0000"));
        // The CSP allows exactly the inline script and style on the page, and the logo's host.
        let csp = page.csp();
        assert!(csp.contains(&hash(APP_JS)));
        let style =
            &html[html.find("<style>").expect("style") + 7..html.find("</style>").expect("end")];
        assert!(csp.contains(&hash(style)));
        assert!(csp.contains("img-src data: https://cdn.acme.example;"));
        assert!(csp.starts_with("default-src 'none'"));
        assert!(html.len() < 40 * 1024, "{} bytes", html.len());
    }

    #[test]
    fn an_operator_template_needs_the_app_and_the_script() {
        let template = |text: &str| Look {
            template: Some(text.into()),
            ..Look::default()
        };
        assert_eq!(
            WalletPage::new(
                &[requirement(None)],
                "",
                &template("<html>{{script}}</html>")
            )
            .err(),
            Some(PaywallError::Missing("{{app}}"))
        );
        let page = WalletPage::new(
            &[requirement(None)],
            "",
            &template("<html><h1>Ours: {{title}}</h1>{{app}}{{script}}</html>"),
        )
        .expect("page");
        let html = String::from_utf8(page.render("dGVybXM=").to_vec()).expect("utf-8");
        assert!(html.starts_with("<html><h1>Ours: Payment required</h1><div id=\"x402-app\""));
    }
}

//! Images in requests: base64 strings, `data:` URLs and uploaded bytes, checked for
//! size from their header before any pixel is decoded (decompression bombs).

use std::io::Cursor;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use image::{DynamicImage, ImageReader};

use super::error::ApiError;

/// Standard base64, padding optional (clients differ).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decode standard base64 (whitespace ignored); `what` names the field in errors.
pub(crate) fn base64_bytes(text: &str, what: &'static str) -> Result<Vec<u8>, ApiError> {
    let cleaned: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    BASE64.decode(cleaned.as_bytes()).map_err(|e| {
        ApiError::invalid_param(
            what,
            "invalid_base64",
            format!("{what} is not valid base64: {e}"),
        )
    })
}

/// Decode an image given as base64 (or a `data:` URL, which some clients send here too).
pub(crate) fn base64_image(
    text: &str,
    what: &'static str,
    max_pixels: u64,
) -> Result<DynamicImage, ApiError> {
    if text.starts_with("data:") {
        return url_image(text, what, max_pixels, None);
    }
    decode_image(&base64_bytes(text, what)?, what, max_pixels)
}

/// How `http://` and `https://` image URLs are fetched when a server allows it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RemoteFetch {
    /// Largest download in bytes (413 above).
    pub max_bytes: usize,
    /// Time the whole download may take, redirects included.
    pub timeout: std::time::Duration,
}

/// Redirects followed when fetching an image URL.
const MAX_REDIRECTS: u32 = 3;

/// Decode the image of an `image_url`: a `data:...;base64,` URL, or with `remote` an
/// `http(s)://` URL, downloaded within its limits. Without `remote` the server makes
/// no requests to addresses clients choose.
pub(crate) fn url_image(
    url: &str,
    what: &'static str,
    max_pixels: u64,
    remote: Option<RemoteFetch>,
) -> Result<DynamicImage, ApiError> {
    let Some(rest) = url.strip_prefix("data:") else {
        let scheme = url.split(':').next().unwrap_or_default();
        let web = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
        return match remote {
            Some(limits) if web => decode_image(&fetch(url, what, limits)?, what, max_pixels),
            _ => Err(ApiError::invalid_param(
                what,
                "remote_images_disabled",
                format!(
                    "image URLs with scheme `{scheme}` are not fetched by this server (it \
                     fetches http and https URLs only when started with \
                     --allow-remote-images); send the image inline as a \
                     data:image/...;base64,... URL"
                ),
            )),
        };
    };
    let Some((meta, data)) = rest.split_once(',') else {
        return Err(ApiError::invalid_param(
            what,
            "invalid_data_url",
            "a data: URL needs a comma before its data",
        ));
    };
    if !meta.split(';').any(|p| p.eq_ignore_ascii_case("base64")) {
        return Err(ApiError::invalid_param(
            what,
            "invalid_data_url",
            "only base64 data: URLs are accepted (data:image/png;base64,...)",
        ));
    }
    decode_image(&base64_bytes(data, what)?, what, max_pixels)
}

/// Download `url` (blocking: callers run on a blocking thread) within `limits`.
fn fetch(url: &str, what: &'static str, limits: RemoteFetch) -> Result<Vec<u8>, ApiError> {
    let failed = |reason: String| {
        ApiError::invalid_param(
            what,
            "image_fetch_failed",
            format!("fetching the image at {url}: {reason}"),
        )
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(limits.timeout))
        .max_redirects(MAX_REDIRECTS)
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => failed(format!("the server answered HTTP {code}")),
        other => failed(other.to_string()),
    })?;
    let max = limits.max_bytes as u64;
    response
        .body_mut()
        .with_config()
        .limit(max)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => ApiError::too_large(
                "image_too_large",
                format!("the image at {url} is larger than this server's limit of {max} bytes"),
            ),
            other => failed(other.to_string()),
        })
}

/// Decode image bytes of any supported format, refusing images of more than
/// `max_pixels` pixels from their header alone.
pub(crate) fn decode_image(
    bytes: &[u8],
    what: &'static str,
    max_pixels: u64,
) -> Result<DynamicImage, ApiError> {
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| ApiError::invalid_param(what, "invalid_image", format!("{what}: {e}")))
    };
    let probe = reader()?;
    if probe.format().is_none() {
        return Err(ApiError::invalid_param(
            what,
            "invalid_image",
            format!(
                "{what} is not an image in a supported format (PNG, JPEG, GIF, BMP, TIFF, WebP)"
            ),
        ));
    }
    let (w, h) = probe.into_dimensions().map_err(|e| {
        ApiError::invalid_param(what, "invalid_image", format!("{what} cannot be read: {e}"))
    })?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(ApiError::too_large(
            "image_too_large",
            format!(
                "{what} is {w}x{h} = {pixels} pixels, more than this server's limit of {max_pixels}"
            ),
        ));
    }
    if pixels == 0 {
        return Err(ApiError::invalid_param(
            what,
            "invalid_image",
            format!("{what} has no pixels ({w}x{h})"),
        ));
    }
    let mut decoder = reader()?;
    let mut limits = image::Limits::default();
    // The header said w x h; a decoder asking for far more than that is refused.
    limits.max_alloc = Some(pixels.saturating_mul(16).max(1 << 20));
    decoder.limits(limits);
    let image = decoder.decode().map_err(|e| {
        ApiError::invalid_param(
            what,
            "invalid_image",
            format!("{what} cannot be decoded: {e}"),
        )
    })?;
    for warning in crate::preprocess::image_warnings(bytes) {
        tracing::warn!("{what}: {warning}");
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = DynamicImage::ImageRgb8(image::RgbImage::new(w, h));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn images_decode_from_base64_and_data_urls() {
        let b64 = BASE64.encode(png(3, 2));
        let img = base64_image(&b64, "image", 100).unwrap();
        assert_eq!((img.width(), img.height()), (3, 2));
        let url = format!("data:image/png;base64,{b64}");
        assert_eq!(url_image(&url, "image_url", 100, None).unwrap().width(), 3);
        assert_eq!(base64_image(&url, "image", 100).unwrap().height(), 2);
        // Without padding, with line breaks.
        let unpadded = b64.trim_end_matches('=');
        let wrapped = format!("{}\n{}", &unpadded[..10], &unpadded[10..]);
        assert_eq!(base64_image(&wrapped, "image", 100).unwrap().width(), 3);
    }

    #[test]
    fn bad_images_are_typed_errors() {
        let code = |r: Result<DynamicImage, ApiError>| r.unwrap_err().code;
        assert_eq!(code(base64_image("%%%", "image", 100)), "invalid_base64");
        assert_eq!(
            code(base64_image(&BASE64.encode(b"hello"), "image", 100)),
            "invalid_image"
        );
        assert_eq!(
            code(url_image("https://example.com/cat.png", "u", 100, None)),
            "remote_images_disabled"
        );
        assert_eq!(
            code(url_image("data:image/png,abc", "u", 100, None)),
            "invalid_data_url"
        );
        assert_eq!(
            code(url_image("data:image/png;base64", "u", 100, None)),
            "invalid_data_url"
        );
        // Too many pixels, refused from the header.
        let big = BASE64.encode(png(20, 10));
        let e = base64_image(&big, "image", 199).unwrap_err();
        assert_eq!((e.code, e.status.as_u16()), ("image_too_large", 413));
        // A truncated PNG.
        let mut cut = png(8, 8);
        cut.truncate(cut.len() / 2);
        assert_eq!(code(decode_image(&cut, "image", 100)), "invalid_image");
    }
}

//! JPEG decoded by libjpeg-turbo's decoder (mozjpeg's build of it), as OpenCV's
//! `cv2.imdecode` decodes it for rapidocr: the same integer IDCT, upsampling and colour
//! tables, so the page's pixels are rapidocr's to the bit (Rust's decoders differ in
//! about 1% of values by up to 4 levels, enough to move a box or a space).

use std::panic::{catch_unwind, AssertUnwindSafe};

use image::RgbImage;
use mozjpeg::{ColorSpace, Decompress};

/// The image in BGR order (as `cv2.imdecode` gives it); None where libjpeg cannot turn
/// its colour space into BGR (CMYK, YCCK), for another decoder to try. libjpeg reports
/// a fatal error by unwinding (without the panic hook): it is caught here, as the
/// error it is.
pub fn decode_bgr(encoded: &[u8]) -> Result<Option<RgbImage>, String> {
    let decoded = catch_unwind(AssertUnwindSafe(|| -> std::io::Result<Option<RgbImage>> {
        let decompress = Decompress::new_mem(encoded)?;
        if matches!(
            decompress.color_space(),
            ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK
        ) {
            return Ok(None);
        }
        let mut started = decompress.to_colorspace(ColorSpace::JCS_EXT_BGR)?;
        let (width, height) = (started.width() as u32, started.height() as u32);
        let pixels = started.read_scanlines::<u8>()?;
        // A truncated file still gives every row (libjpeg fills what is missing with
        // grey, as OpenCV shows it); only a fatal error unwinds.
        started.finish()?;
        Ok(RgbImage::from_raw(width, height, pixels))
    }));
    match decoded {
        Ok(Ok(page)) => Ok(page),
        Ok(Err(e)) => Err(e.to_string()),
        Err(payload) => Err(crate::backend::panic_message(payload.as_ref())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(width: u32, height: u32) -> Vec<u8> {
        let page = RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x / 2) as u8, (y / 2) as u8, 200])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&page)
            .unwrap();
        out
    }

    #[test]
    fn a_page_comes_back_in_bgr_and_broken_files_are_errors() {
        let jpeg = encoded(400, 240);
        let page = decode_bgr(&jpeg).unwrap().unwrap();
        assert_eq!(page.dimensions(), (400, 240));
        // Blue (200 everywhere) first, red (x / 2) last.
        let far = page.get_pixel(390, 230);
        assert!(
            far[0].abs_diff(200) <= 4 && far[2].abs_diff(195) <= 4,
            "{far:?}"
        );
        let garbage = decode_bgr(b"\xff\xd8\xff\xe0 not really").unwrap_err();
        assert!(garbage.contains("libjpeg"), "{garbage}");
        let short = decode_bgr(&jpeg[..jpeg.len() / 2]).unwrap().unwrap();
        assert_eq!(short.dimensions(), (400, 240));
    }
}

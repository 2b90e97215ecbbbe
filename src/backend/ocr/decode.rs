//! `image_decode`: one encoded PNG or JPEG in; the detector's input, the page the crops
//! are cut from (BGR), and the geometry that maps boxes back to the original out. The
//! header is checked before anything is decoded, so a decompression bomb costs nothing.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits, RgbImage};

use super::{
    f32_tensor, f32_tensor_from, params::Params, resample, tensor, u8_tensor, BackendError,
    Signature, Step,
};
use crate::tensor::{DataType, Tensor, TensorData};

/// What the geometry output holds, in order.
pub const GEOMETRY: [&str; 6] = [
    "ratio_h", "ratio_w", "pad_top", "pad_left", "height", "width",
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum LimitType {
    /// The shorter side is brought up to the limit (never down).
    Min,
    /// The longer side is brought down to the limit (never up).
    Max,
}

impl std::str::FromStr for LimitType {
    type Err = ();

    fn from_str(s: &str) -> Result<LimitType, ()> {
        match s {
            "min" => Ok(LimitType::Min),
            "max" => Ok(LimitType::Max),
            _ => Err(()),
        }
    }
}

pub struct ImageDecode {
    signature: Signature,
    limit_side_len: f64,
    limit_type: LimitType,
    mean: [f64; 3],
    std: [f64; 3],
    max_side_len: u32,
    min_side_len: u32,
    min_height: u32,
    width_height_ratio: f64,
    max_pixels: u64,
    min_image_side: u32,
}

impl ImageDecode {
    pub fn new(params: &mut Params) -> Result<ImageDecode, String> {
        let three = |v: Vec<f64>, key: &str| -> Result<[f64; 3], String> {
            v.try_into()
                .map_err(|_| format!("key `parameters.{key}.string_value`: expected three numbers"))
        };
        let std = three(params.list("std", &[0.5; 3], "three numbers")?, "std")?;
        if std.contains(&0.0) {
            return Err("key `parameters.std.string_value`: expected numbers other than 0".into());
        }
        Ok(ImageDecode {
            signature: Signature {
                inputs: vec![tensor("image", DataType::Bytes, &[1])],
                outputs: vec![
                    tensor("det_input", DataType::Fp32, &[1, 3, -1, -1]),
                    tensor("pixels", DataType::Uint8, &[-1, -1, 3]),
                    tensor("geometry", DataType::Fp32, &[GEOMETRY.len() as i64]),
                ],
            },
            limit_side_len: params.get("limit_side_len", 736.0, "a number of pixels")?,
            limit_type: params.get("limit_type", LimitType::Min, "min or max")?,
            mean: three(params.list("mean", &[0.5; 3], "three numbers")?, "mean")?,
            std,
            max_side_len: params.get("max_side_len", 2000, "a number of pixels")?,
            min_side_len: params.get("min_side_len", 30, "a number of pixels")?,
            min_height: params.get("min_height", 30, "a number of pixels")?,
            width_height_ratio: params.get("width_height_ratio", 8.0, "a ratio, or -1 for none")?,
            max_pixels: params.get("max_pixels", 40_000_000, "a number of pixels")?,
            min_image_side: params.get("min_image_side", 4, "a number of pixels")?,
        })
    }

    /// Decodes the image (BGR, as OpenCV holds it) after checking its header against
    /// the limits.
    fn decode(&self, encoded: &[u8]) -> Result<RgbImage, BackendError> {
        let bad = |what: String| BackendError::BadInput(format!("input 'image': {what}"));
        let reader = || {
            let reader = ImageReader::new(Cursor::new(encoded))
                .with_guessed_format()
                .map_err(|e| bad(format!("cannot read it: {e}")))?;
            match reader.format() {
                Some(ImageFormat::Png | ImageFormat::Jpeg) => Ok(reader),
                Some(other) => Err(bad(format!(
                    "{other:?} images are not taken; send PNG or JPEG"
                ))),
                None => Err(bad(format!(
                    "not a PNG or JPEG image ({} bytes that start with neither signature)",
                    encoded.len()
                ))),
            }
        };
        let header = reader()?;
        let jpeg = header.format() == Some(ImageFormat::Jpeg);
        let (width, height) = header
            .into_dimensions()
            .map_err(|e| bad(format!("its header cannot be read: {e}")))?;
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels {
            return Err(bad(format!(
                "{width}x{height} is {pixels} pixels, over the limit of {} (max_pixels)",
                self.max_pixels
            )));
        }
        if width.min(height) < self.min_image_side {
            return Err(bad(format!(
                "{width}x{height} is too small to hold text (at least {} pixels each way)",
                self.min_image_side
            )));
        }
        if jpeg {
            if let Some(page) = super::jpeg::decode_bgr(encoded)
                .map_err(|e| bad(format!("cannot decode it: {e}")))?
            {
                return Ok(page);
            }
        }
        let mut reader = reader()?;
        let mut limits = Limits::default();
        limits.max_image_width = Some(width);
        limits.max_image_height = Some(height);
        // The decoded image at 16 bits a channel with alpha, and the decoder's own buffers.
        limits.max_alloc = Some(pixels * 8 * 2 + (1 << 20));
        reader.limits(limits);
        let decoded = reader
            .decode()
            .map_err(|e| bad(format!("cannot decode it: {e}")))?;
        Ok(flatten(decoded))
    }

    /// The image resized (to multiples of 32) so that neither side passes the limits.
    fn fit_sides(&self, image: RgbImage) -> (RgbImage, f64, f64) {
        let (w, h) = (image.width() as f64, image.height() as f64);
        let long = w.max(h);
        let short = w.min(h);
        let ratio = if long > self.max_side_len as f64 {
            self.max_side_len as f64 / long
        } else if short < self.min_side_len as f64 {
            self.min_side_len as f64 / short
        } else {
            return (image, 1.0, 1.0);
        };
        let (rw, rh) = (to_32(w * ratio), to_32(h * ratio));
        (
            resample::resize(&image, rw, rh),
            h / rh as f64,
            w / rw as f64,
        )
    }

    /// Rows of black above and below a page too low or too wide for the detector.
    fn letterbox(&self, image: RgbImage) -> (RgbImage, u32) {
        let (w, h) = image.dimensions();
        let too_wide =
            self.width_height_ratio > 0.0 && w as f64 / h as f64 > self.width_height_ratio;
        if h > self.min_height && !too_wide {
            return (image, 0);
        }
        let ratio = if self.width_height_ratio > 0.0 {
            self.width_height_ratio
        } else {
            1.0
        };
        let new_h = ((w as f64 / ratio) as u32).max(self.min_height) * 2;
        let pad = new_h.abs_diff(h) / 2;
        let mut out = RgbImage::new(w, h + 2 * pad);
        image::imageops::replace(&mut out, &image, 0, i64::from(pad));
        (out, pad)
    }

    /// The detector's input: resized to multiples of 32 within the side limit,
    /// normalised, channels first.
    fn det_input(&self, page: &RgbImage) -> Tensor {
        let (w, h) = (page.width() as f64, page.height() as f64);
        let ratio = match self.limit_type {
            LimitType::Min if w.min(h) < self.limit_side_len => self.limit_side_len / w.min(h),
            LimitType::Max if w.max(h) > self.limit_side_len => self.limit_side_len / w.max(h),
            _ => 1.0,
        };
        let (rw, rh) = (to_32((w * ratio).trunc()), to_32((h * ratio).trunc()));
        let resized = resample::resize(page, rw, rh);
        // Channels first, each value written straight into the tensor's bytes: no f32
        // copy of the page beside them (15 MB for a cheque at 736x1696).
        let (mean, std) = (self.mean, self.std);
        let values = (0..3).flat_map(|c| {
            resized.pixels().map(move |pixel| {
                // rapidocr's arithmetic: an f32 product with 1/255, then the mean and std
                // in f64, narrowed once.
                let scaled = pixel[c] as f32 * (1.0f64 / 255.0) as f32;
                ((scaled as f64 - mean[c]) / std[c]) as f32
            })
        });
        f32_tensor_from("det_input", vec![1, 3, rh as usize, rw as usize], values)
    }
}

/// Rounds a side to a multiple of 32 as Python's round() does (halves to even), at
/// least 32.
fn to_32(side: f64) -> u32 {
    ((side.trunc() / 32.0).round_ties_even() as u32 * 32).max(32)
}

/// Any decoded image as 8-bit BGR: grey replicated, alpha laid over white.
fn flatten(image: DynamicImage) -> RgbImage {
    let (width, height) = (image.width(), image.height());
    let mut bgr = if image.color().has_alpha() {
        let rgba = image.into_rgba8();
        let over = |c: u8, a: u32| ((c as u32 * a + 255 * (255 - a)) / 255) as u8;
        rgba.as_raw()
            .chunks_exact(4)
            .flat_map(|p| {
                let a = p[3] as u32;
                [over(p[0], a), over(p[1], a), over(p[2], a)]
            })
            .collect()
    } else {
        image.into_rgb8().into_raw()
    };
    for pixel in bgr.chunks_exact_mut(3) {
        pixel.swap(0, 2);
    }
    RgbImage::from_raw(width, height, bgr).expect("width x height x 3 bytes")
}

impl Step for ImageDecode {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let encoded = match &inputs[0].data {
            TensorData::Bytes(items) if items.len() == 1 => &items[0],
            _ => {
                return Err(BackendError::BadInput(
                    "input 'image': expected one encoded image".into(),
                ))
            }
        };
        let original = self.decode(encoded)?;
        let (raw_w, raw_h) = original.dimensions();
        let (fitted, ratio_h, ratio_w) = self.fit_sides(original);
        let (page, pad_top) = self.letterbox(fitted);
        let det_input = self.det_input(&page);
        let (w, h) = page.dimensions();
        let geometry = [
            ratio_h as f32,
            ratio_w as f32,
            pad_top as f32,
            0.0,
            raw_h as f32,
            raw_w as f32,
        ];
        Ok(vec![
            det_input,
            u8_tensor("pixels", vec![h as usize, w as usize, 3], page.into_raw()),
            f32_tensor("geometry", vec![GEOMETRY.len()], &geometry),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn step() -> ImageDecode {
        ImageDecode::new(&mut Params::new(&BTreeMap::new())).unwrap()
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
        let mut out = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    fn run(bytes: Vec<u8>) -> Result<Vec<Tensor>, BackendError> {
        let input = Tensor {
            name: "image".into(),
            datatype: DataType::Bytes,
            shape: vec![1],
            data: TensorData::Bytes(vec![bytes.into()]),
        };
        step().run(&[input])
    }

    #[test]
    fn a_page_is_sized_for_the_detector_and_kept_for_the_crops() {
        let out = run(png(1600, 700)).unwrap();
        // The short side 700 < 736: 736/700 -> 1682 x 736, rounded to 32s: 1696 x 736.
        assert_eq!(out[0].shape, vec![1, 3, 736, 1696]);
        assert_eq!(out[1].shape, vec![700, 1600, 3]);
        assert_eq!(
            super::super::f32s(&out[2]),
            vec![1.0, 1.0, 0.0, 0.0, 700.0, 1600.0]
        );
        // White is (1 - 0.5) / 0.5.
        assert_eq!(super::super::f32s(&out[0])[0], 1.0);
    }

    #[test]
    fn bad_images_are_named_without_decoding_them() {
        let err = |bytes: Vec<u8>| run(bytes).unwrap_err().to_string();
        assert!(err(b"hello".to_vec()).contains("not a PNG or JPEG"));
        let mut truncated = png(64, 64);
        truncated.truncate(60);
        assert!(err(truncated).contains("input 'image'"));
        assert!(err(png(1, 1)).contains("1x1 is too small"));
        // A header that claims 100000 x 100000 pixels (its checksum redone): refused
        // before any allocation.
        let mut bomb = png(64, 64);
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let refused = err(bomb);
        assert!(
            refused.contains("100000x100000 is 10000000000 pixels, over the limit"),
            "{refused}"
        );
    }

    /// PNG's chunk checksum (CRC-32, reflected, polynomial 0xEDB88320).
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for byte in bytes {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn a_low_wide_line_is_letterboxed() {
        let out = run(png(600, 40)).unwrap();
        // 600 / 40 = 15 > 8: padded to max(600 / 8, 30) * 2 = 150 high, 55 rows each side.
        assert_eq!(out[1].shape, vec![150, 600, 3]);
        assert_eq!(super::super::f32s(&out[2])[2], 55.0);
    }
}

//! Annotating an image with boxes, labels and translucent masks (for `--out`).

use image::{Rgb, RgbImage};

const COLORS: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
];

/// One object to draw: pixel box (x_min, y_min, x_max, y_max), label, optional mask.
pub struct Annotation<'a> {
    pub bbox: (f64, f64, f64, f64),
    pub label: &'a str,
    pub mask: Option<&'a [bool]>,
}

pub fn annotate(image: &mut RgbImage, objects: &[Annotation<'_>]) {
    let (w, h) = image.dimensions();
    for (i, o) in objects.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        if let Some(mask) = o.mask {
            for (idx, &on) in mask.iter().enumerate() {
                let (x, y) = ((idx as u32) % w, (idx as u32) / w);
                if on && y < h {
                    let p = image.get_pixel_mut(x, y);
                    for (v, &c) in p.0.iter_mut().zip(&color) {
                        *v = ((u16::from(*v) * 3 + u16::from(c) * 2) / 5) as u8;
                    }
                }
            }
        }
        let (x0, y0, x1, y1) = o.bbox;
        let clamp = |v: f64, max: u32| (v.max(0.0) as u32).min(max.saturating_sub(1));
        let (x0, y0, x1, y1) = (clamp(x0, w), clamp(y0, h), clamp(x1, w), clamp(y1, h));
        let thickness = (w.min(h) / 200).max(1);
        for t in 0..thickness {
            for x in x0..=x1 {
                put(image, x, y0 + t, color);
                put(image, x, y1.saturating_sub(t), color);
            }
            for y in y0..=y1 {
                put(image, x0 + t, y, color);
                put(image, x1.saturating_sub(t), y, color);
            }
        }
        let scale = (w.min(h) / 160).clamp(1, 4);
        let text_y = if y0 >= 7 * scale {
            y0 - 7 * scale
        } else {
            y0 + thickness + 1
        };
        draw_text(image, x0, text_y, o.label, scale, color);
    }
}

fn put(image: &mut RgbImage, x: u32, y: u32, color: [u8; 3]) {
    if x < image.width() && y < image.height() {
        image.put_pixel(x, y, Rgb(color));
    }
}

/// A 3 x 5 pixel font: five rows of three bits per glyph.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [6, 1, 2, 4, 7],
        '3' => [6, 1, 2, 1, 6],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 6, 1, 6],
        '6' => [3, 4, 7, 5, 7],
        '7' => [7, 1, 2, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 6],
        '-' => [0, 0, 7, 0, 0],
        '.' => [0, 0, 0, 0, 2],
        ' ' => [0; 5],
        _ => [7, 7, 7, 7, 7],
    }
}

fn draw_text(image: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, color: [u8; 3]) {
    for (i, c) in text.chars().enumerate() {
        let gx = x + i as u32 * 4 * scale;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            put(
                                image,
                                gx + col * scale + dx,
                                y + row as u32 * scale + dy,
                                color,
                            );
                        }
                    }
                }
            }
        }
    }
}

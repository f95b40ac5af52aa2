//! The anti-aliased renderer: filled single-colour objects on black, 4×4 supersampling.

use crate::caption::Shape;
use crate::scene::{Object, Scene};

/// An S×S RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub side: usize,
    pub rgb: Vec<u8>,
}

impl Image {
    pub fn black(side: usize) -> Self {
        Self {
            side,
            rgb: vec![0; side * side * 3],
        }
    }

    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = 3 * (y * self.side + x);
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

/// Subsamples per pixel along each axis.
const SUPERSAMPLE: usize = 4;

/// Whether the point (x, y) (units of S) lies inside the object.
fn inside(o: &Object, x: f64, y: f64) -> bool {
    let r = o.half_extent();
    let (dx, dy) = (x - o.cx, y - o.cy);
    match o.shape {
        Shape::Circle => dx * dx + dy * dy <= r * r,
        Shape::Square => dx.abs() <= r && dy.abs() <= r,
        // isosceles: apex at the top centre of the box, base along its bottom edge
        Shape::Triangle => dy <= r && dy >= -r && dx.abs() <= (dy + r) / 2.0,
    }
}

pub fn render(scene: &Scene, side: usize) -> Image {
    let mut image = Image::black(side);
    let s = side as f64;
    let n = (SUPERSAMPLE * SUPERSAMPLE) as f64;
    for y in 0..side {
        for x in 0..side {
            let mut rgb = [0f64; 3];
            for o in &scene.objects {
                let mut hits = 0usize;
                for j in 0..SUPERSAMPLE {
                    for i in 0..SUPERSAMPLE {
                        let px = (x as f64 + (i as f64 + 0.5) / SUPERSAMPLE as f64) / s;
                        let py = (y as f64 + (j as f64 + 0.5) / SUPERSAMPLE as f64) / s;
                        hits += usize::from(inside(o, px, py));
                    }
                }
                let cover = hits as f64 / n;
                for (acc, c) in rgb.iter_mut().zip(o.color.rgb()) {
                    *acc += cover * c as f64;
                }
            }
            let at = 3 * (y * side + x);
            for (k, v) in rgb.iter().enumerate() {
                image.rgb[at + k] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    image
}

//! The anti-aliased renderer: filled single-colour objects on black, 4×4 supersampling.

use crate::canvas::Canvas;
use crate::caption::Shape;
use crate::scene::{Object, Scene};

/// A W × H RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Image {
    pub fn black(canvas: Canvas) -> Self {
        Self {
            width: canvas.width,
            height: canvas.height,
            rgb: vec![0; canvas.pixels() * 3],
        }
    }

    pub fn canvas(&self) -> Canvas {
        Canvas::new(self.width, self.height)
    }

    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = 3 * (y * self.width + x);
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

/// Subsamples per pixel along each axis.
const SUPERSAMPLE: usize = 4;

/// Whether the point (x / W, y / H) lies inside the object. The offsets are taken to units of
/// S (division by exactly 1 on a square canvas, so version 1's images are unchanged).
fn inside(o: &Object, canvas: Canvas, x: f64, y: f64) -> bool {
    let r = o.half_extent();
    let (dx, dy) = ((x - o.cx) / canvas.kx(), (y - o.cy) / canvas.ky());
    match o.shape {
        Shape::Circle => dx * dx + dy * dy <= r * r,
        Shape::Square => dx.abs() <= r && dy.abs() <= r,
        // isosceles: apex at the top centre of the box, base along its bottom edge
        Shape::Triangle => dy <= r && dy >= -r && dx.abs() <= (dy + r) / 2.0,
    }
}

/// The scene on its canvas.
pub fn render(scene: &Scene) -> Image {
    let canvas = scene.canvas;
    let mut image = Image::black(canvas);
    let (w, h) = (canvas.width as f64, canvas.height as f64);
    let n = (SUPERSAMPLE * SUPERSAMPLE) as f64;
    for y in 0..canvas.height {
        for x in 0..canvas.width {
            let mut rgb = [0f64; 3];
            for o in &scene.objects {
                let mut hits = 0usize;
                for j in 0..SUPERSAMPLE {
                    for i in 0..SUPERSAMPLE {
                        let px = (x as f64 + (i as f64 + 0.5) / SUPERSAMPLE as f64) / w;
                        let py = (y as f64 + (j as f64 + 0.5) / SUPERSAMPLE as f64) / h;
                        hits += usize::from(inside(o, canvas, px, py));
                    }
                }
                let cover = hits as f64 / n;
                for (acc, c) in rgb.iter_mut().zip(o.color.rgb()) {
                    *acc += cover * c as f64;
                }
            }
            let at = 3 * (y * canvas.width + x);
            for (k, v) in rgb.iter().enumerate() {
                image.rgb[at + k] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    image
}

//! The reference matting network: a small U-Net defined with `tch`, four down-sampling
//! stages and a bottleneck whose pooled features double as the image embedding.

use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Tensor};

/// Channel widths of the encoder stages, then the bottleneck.
pub const WIDTHS: [i64; 5] = [12, 24, 48, 64, 96];
/// Length of the embedding the network returns (pooled bottleneck + last encoder stage).
pub const EMBEDDING_DIM: i64 = WIDTHS[4] + WIDTHS[3];

/// Two 3x3 convolutions, each followed by batch norm and ReLU.
#[derive(Debug)]
struct DoubleConv {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
}

impl DoubleConv {
    fn new(p: nn::Path, c_in: i64, c_out: i64) -> Self {
        let cfg = nn::ConvConfig { padding: 1, bias: false, ..Default::default() };
        DoubleConv {
            conv1: nn::conv2d(&p / "conv1", c_in, c_out, 3, cfg),
            bn1: nn::batch_norm2d(&p / "bn1", c_out, Default::default()),
            conv2: nn::conv2d(&p / "conv2", c_out, c_out, 3, cfg),
            bn2: nn::batch_norm2d(&p / "bn2", c_out, Default::default()),
        }
    }
}

impl ModuleT for DoubleConv {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv1).apply_t(&self.bn1, train).relu().apply(&self.conv2).apply_t(&self.bn2, train).relu()
    }
}

/// The network: encoder, bottleneck, decoder with skip connections, 1x1 head to logits.
#[derive(Debug)]
pub struct UNet {
    down: Vec<DoubleConv>,
    bottleneck: DoubleConv,
    up: Vec<DoubleConv>,
    head: nn::Conv2D,
}

/// What one forward pass yields.
pub struct UNetOutput {
    /// Alpha logits `[B,1,H,W]`.
    pub logits: Tensor,
    /// Pooled features `[B,EMBEDDING_DIM]`, not normalised.
    pub embedding: Tensor,
}

impl UNet {
    /// Creates the variables under `p`.
    pub fn new(p: &nn::Path) -> Self {
        let mut down = Vec::new();
        let mut c_in = 3;
        for (i, &w) in WIDTHS[..4].iter().enumerate() {
            down.push(DoubleConv::new(p / format!("down{i}"), c_in, w));
            c_in = w;
        }
        let bottleneck = DoubleConv::new(p / "bottleneck", c_in, WIDTHS[4]);
        let mut up = Vec::new();
        let mut c_below = WIDTHS[4];
        for (i, &w) in WIDTHS[..4].iter().enumerate().rev() {
            up.push(DoubleConv::new(p / format!("up{i}"), c_below + w, w));
            c_below = w;
        }
        let head = nn::conv2d(p / "head", WIDTHS[0], 1, 1, Default::default());
        UNet { down, bottleneck, up, head }
    }

    /// Runs the network; input height and width must be multiples of 16.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> UNetOutput {
        let mut skips = Vec::with_capacity(self.down.len());
        let mut x = xs.shallow_clone();
        for stage in &self.down {
            let y = stage.forward_t(&x, train);
            x = y.max_pool2d_default(2);
            skips.push(y);
        }
        let bottom = self.bottleneck.forward_t(&x, train);
        let pooled = |t: &Tensor| t.mean_dim(&[2i64, 3][..], false, Kind::Float);
        let embedding = Tensor::cat(&[pooled(&bottom), pooled(&skips[3])], 1);
        let mut x = bottom;
        for (stage, skip) in self.up.iter().zip(skips.iter().rev()) {
            let size = skip.size();
            let upsampled = x.upsample_bilinear2d([size[2], size[3]], false, None, None);
            x = stage.forward_t(&Tensor::cat(&[upsampled, skip.shallow_clone()], 1), train);
        }
        UNetOutput { logits: self.head.forward(&x), embedding }
    }
}

use fleet_worker::reference::unet::UNet;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Reduction, Tensor};
fn main() {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = UNet::new(&vs.root());
    let mut opt = nn::Adam::default().build(&vs, 1e-3).unwrap();
    let x = Tensor::randn([16, 3, 128, 128], (Kind::Float, Device::Cpu));
    let y = Tensor::rand([16, 1, 128, 128], (Kind::Float, Device::Cpu)).gt(0.5).to_kind(Kind::Float);
    for i in 0..8 {
        let t = std::time::Instant::now();
        let logits = net.forward_t(&x, true).logits;
        let t1 = t.elapsed();
        let loss = logits.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, Reduction::Mean);
        opt.backward_step(&loss);
        println!("step {i} fwd {:?} total {:?} threads {}", t1, t.elapsed(), tch::get_num_threads());
    }
}

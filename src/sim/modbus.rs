//! The simulated inverter behind plain Modbus: TCP (an Ethernet stick or an
//! RS485 gateway) and RTU on a serial line (a USB RS485 adapter). Both
//! serve the same model as the Solarman simulator, through tokio-modbus's
//! own server, so the bridge's Modbus TCP and RTU links meet an
//! implementation that is not ours.

use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response};

use super::deye_model::{InverterModel, SimTime};

/// Answers Modbus requests from the model.
#[derive(Clone)]
pub struct ModelService {
    pub model: Arc<Mutex<InverterModel>>,
}

impl ModelService {
    fn answer(&self, req: Request<'static>) -> Result<Response, ExceptionCode> {
        let mut model = self
            .model
            .lock()
            .map_err(|_| ExceptionCode::ServerDeviceFailure)?;
        model.advance(SimTime::from_system_time(SystemTime::now()));
        match req {
            Request::ReadHoldingRegisters(addr, qty) => {
                if qty == 0 || qty > 125 {
                    return Err(ExceptionCode::IllegalDataValue);
                }
                model
                    .read(addr, qty)
                    .map(Response::ReadHoldingRegisters)
                    .ok_or(ExceptionCode::IllegalDataAddress)
            }
            Request::WriteMultipleRegisters(addr, values) => model
                .write(addr, &values)
                .map(|()| Response::WriteMultipleRegisters(addr, values.len() as u16))
                .map_err(|_| ExceptionCode::IllegalDataAddress),
            Request::WriteSingleRegister(addr, value) => model
                .write(addr, &[value])
                .map(|()| Response::WriteSingleRegister(addr, value))
                .map_err(|_| ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

impl Service for ModelService {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        ready(self.answer(req))
    }
}

/// A Modbus TCP server on loopback serving the model.
pub struct ModbusTcpSim {
    pub addr: SocketAddr,
    pub model: Arc<Mutex<InverterModel>>,
    task: JoinHandle<()>,
}

impl ModbusTcpSim {
    pub async fn start(listen: SocketAddr, model: InverterModel) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let model = Arc::new(Mutex::new(model));
        let service = ModelService {
            model: model.clone(),
        };
        let task = tokio::spawn(async move {
            let server = tokio_modbus::server::tcp::Server::new(listener);
            let on_connected = |stream, _addr| {
                let service = service.clone();
                async move { Ok(Some((service, stream))) }
            };
            let on_error =
                |e| tracing::debug!(error = %e, "simulated Modbus TCP: connection ended");
            if let Err(e) = server.serve(&on_connected, on_error).await {
                tracing::warn!(error = %e, "simulated Modbus TCP server stopped");
            }
        });
        Ok(Self { addr, model, task })
    }
}

impl Drop for ModbusTcpSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the model as a Modbus RTU slave on an open serial line until the
/// line closes.
pub async fn serve_rtu(
    serial: tokio_serial::SerialStream,
    model: Arc<Mutex<InverterModel>>,
) -> std::io::Result<()> {
    tokio_modbus::server::rtu::Server::new(serial)
        .serve_forever(ModelService { model })
        .await
}

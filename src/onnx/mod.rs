//! A small ONNX graph writer over tract's own protobuf types (`tract_onnx::pb`), used by the
//! Llama exporter and the packer. Nodes get unique output names; initializers are raw
//! little-endian bytes.

use tract_onnx::pb::{
    self, attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    type_proto,
};

pub use tract_onnx::pb::{GraphProto, ModelProto, NodeProto, TensorProto};

/// Default-domain opset the writer targets.
pub const OPSET: i64 = 17;
/// Domain of onnxruntime's contrib ops (`MatMulNBits`, ...).
pub const MS_DOMAIN: &str = "com.microsoft";
/// `MatMulNBits`' `accuracy_level` at which onnxruntime computes with activations quantized
/// to int8 blocks (lower levels and the default: float activations).
pub const ACCURACY_LEVEL_INT8: i64 = 4;

/// A dimension of a graph input or output.
#[derive(Debug, Clone)]
pub enum Dim {
    Fixed(i64),
    Named(&'static str),
}

/// Attribute constructors.
pub fn attr_i(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: v, ..Default::default() }
}
pub fn attr_f(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: AttributeType::Float as i32, f: v, ..Default::default() }
}
pub fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: v.to_vec(), ..Default::default() }
}

fn tensor(name: &str, dt: DataType, dims: &[usize], raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        data_type: dt as i32,
        dims: dims.iter().map(|d| *d as i64).collect(),
        raw_data: raw,
        ..Default::default()
    }
}

fn value_info(name: &str, dt: DataType, dims: &[Dim]) -> pb::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| pb::tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(v) => dimension::Value::DimValue(*v),
                Dim::Named(s) => dimension::Value::DimParam((*s).into()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: dt as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Builds one graph: inputs, outputs, initializers and nodes in topological order.
pub struct GraphBuilder {
    graph: pb::GraphProto,
    uses_ms_domain: bool,
    counter: usize,
    /// Prefix of generated names; made unique when continuing an existing graph.
    prefix: String,
}

impl Default for GraphBuilder {
    fn default() -> Self {
        GraphBuilder { graph: Default::default(), uses_ms_domain: false, counter: 0, prefix: "/edge_llm/".into() }
    }
}

impl GraphBuilder {
    pub fn input(&mut self, name: &str, dt: DataType, dims: &[Dim]) -> String {
        self.graph.input.push(value_info(name, dt, dims));
        name.into()
    }

    /// Declare `value` (already produced by a node) as graph output `name`.
    pub fn output(&mut self, value: &str, name: &str, dt: DataType, dims: &[Dim]) {
        self.node_named("Identity", &[value], vec![], name);
        self.graph.output.push(value_info(name, dt, dims));
    }

    pub fn init_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(tensor(name, DataType::Float, dims, raw));
        name.into()
    }
    pub fn init_f16(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        let raw = data.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        self.graph.initializer.push(tensor(name, DataType::Float16, dims, raw));
        name.into()
    }
    pub fn init_i64(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(tensor(name, DataType::Int64, dims, raw));
        name.into()
    }
    pub fn init_i8(&mut self, name: &str, dims: &[usize], data: &[i8]) -> String {
        let raw = data.iter().map(|v| *v as u8).collect();
        self.graph.initializer.push(tensor(name, DataType::Int8, dims, raw));
        name.into()
    }
    pub fn init_u8(&mut self, name: &str, dims: &[usize], data: Vec<u8>) -> String {
        self.graph.initializer.push(tensor(name, DataType::Uint8, dims, data));
        name.into()
    }

    /// A scalar or 1-D i64 constant with a generated name.
    pub fn const_i64(&mut self, data: &[i64]) -> String {
        let name = self.fresh("const");
        let dims: Vec<usize> = if data.len() == 1 { vec![] } else { vec![data.len()] };
        self.init_i64(&name, &dims, data)
    }
    pub fn const_ints(&mut self, data: &[i64]) -> String {
        let name = self.fresh("const");
        self.init_i64(&name, &[data.len()], data)
    }
    /// A 0-d int64 constant.
    pub fn const_i64_scalar(&mut self, v: i64) -> String {
        let name = self.fresh("const");
        self.init_i64(&name, &[], &[v])
    }
    pub fn const_i32(&mut self, v: i32) -> String {
        let name = self.fresh("const");
        self.graph.initializer.push(tensor(&name, DataType::Int32, &[], v.to_le_bytes().to_vec()));
        name
    }
    pub fn const_f32(&mut self, v: f32) -> String {
        let name = self.fresh("const");
        self.init_f32(&name, &[], &[v])
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{}{hint}_{}", self.prefix, self.counter)
    }

    /// Add a default-domain node with one output; returns the output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> String {
        let out = self.fresh(op);
        self.node_named(op, inputs, attrs, &out);
        out
    }

    fn node_named(&mut self, op: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>, out: &str) {
        let name = format!("{out}/{op}");
        self.graph.node.push(NodeProto {
            name,
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            attribute: attrs,
            ..Default::default()
        });
    }

    /// Add a node with several outputs and an explicit domain.
    pub fn node_multi(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        outputs: usize,
        attrs: Vec<pb::AttributeProto>,
    ) -> Vec<String> {
        if domain == MS_DOMAIN {
            self.uses_ms_domain = true;
        }
        let base = self.fresh(op);
        let outs: Vec<String> = (0..outputs).map(|i| format!("{base}:{i}")).collect();
        self.graph.node.push(NodeProto {
            name: base,
            op_type: op.into(),
            domain: domain.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outs.clone(),
            attribute: attrs,
            ..Default::default()
        });
        outs
    }

    /// [`GraphBuilder::node_multi`] with only some outputs wired: `present[i]` false leaves
    /// output `i` unnamed (an omitted optional output); its slot in the result is empty.
    pub fn node_multi_opt(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        present: &[bool],
        attrs: Vec<pb::AttributeProto>,
    ) -> Vec<String> {
        let mut outs = self.node_multi(domain, op, inputs, present.len(), attrs);
        for (o, keep) in outs.iter_mut().zip(present) {
            if !keep {
                o.clear();
            }
        }
        self.graph.node.last_mut().expect("just pushed").output = outs.clone();
        outs
    }

    /// Continue an existing graph: its inputs, outputs and initializers stay; its nodes are
    /// taken out and returned so the caller can push them back (or replacements) in order.
    pub fn from_graph(mut graph: pb::GraphProto) -> (Self, Vec<NodeProto>) {
        let nodes = std::mem::take(&mut graph.node);
        let names: Vec<&str> = nodes
            .iter()
            .flat_map(|n| n.output.iter().chain(std::iter::once(&n.name)))
            .chain(graph.initializer.iter().map(|t| &t.name))
            .map(String::as_str)
            .collect();
        let prefix = (0..)
            .map(|i| format!("/edge_llm_{i}/"))
            .find(|p| !names.iter().any(|n| n.starts_with(p.as_str())))
            .expect("some prefix is free");
        (GraphBuilder { graph, uses_ms_domain: false, counter: 0, prefix }, nodes)
    }

    pub fn push_node(&mut self, node: NodeProto) {
        if node.domain == MS_DOMAIN {
            self.uses_ms_domain = true;
        }
        self.graph.node.push(node);
    }

    /// Make `value` available under `name` as well.
    pub fn alias(&mut self, value: &str, name: &str) {
        self.node_named("Identity", &[value], vec![], name);
    }

    pub fn into_graph(self) -> (pb::GraphProto, bool) {
        (self.graph, self.uses_ms_domain)
    }

    /// Finish into a model with `metadata` as string properties.
    pub fn finish(self, graph_name: &str, metadata: &[(&str, String)]) -> ModelProto {
        let mut graph = self.graph;
        graph.name = graph_name.into();
        let mut opset_import = vec![pb::OperatorSetIdProto { domain: String::new(), version: OPSET }];
        if self.uses_ms_domain {
            opset_import.push(pb::OperatorSetIdProto { domain: MS_DOMAIN.into(), version: 1 });
        }
        ModelProto {
            ir_version: 8,
            opset_import,
            producer_name: "edge-llm".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(graph),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| pb::StringStringEntryProto { key: (*k).into(), value: v.clone() })
                .collect(),
            ..Default::default()
        }
    }
}

/// Serialize a model to ONNX protobuf bytes.
/// Values of a float or float16 tensor as f32 (raw data or the typed fields).
pub fn float_values(t: &TensorProto) -> Option<Vec<f32>> {
    match DataType::try_from(t.data_type).ok()? {
        DataType::Float if !t.raw_data.is_empty() => {
            Some(t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        }
        DataType::Float => Some(t.float_data.clone()),
        DataType::Float16 if !t.raw_data.is_empty() => {
            Some(t.raw_data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect())
        }
        DataType::Float16 => Some(t.int32_data.iter().map(|&b| half::f16::from_bits(b as u16).to_f32()).collect()),
        _ => None,
    }
}

pub fn encode(model: &ModelProto) -> Vec<u8> {
    prost::Message::encode_to_vec(model)
}

/// Parse ONNX protobuf bytes.
pub fn decode(bytes: &[u8]) -> crate::Result<ModelProto> {
    <ModelProto as prost::Message>::decode(bytes)
        .map_err(|e| crate::Error::InvalidModel(format!("not an ONNX protobuf: {e}")))
}

pub use tract_onnx::pb::tensor_proto::DataType as OnnxType;

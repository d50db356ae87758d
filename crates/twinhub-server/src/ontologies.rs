//! Ontologies shipped with twinhub: a process plant (Site, Plant, Line,
//! ProcessUnit, Reactor, Agitator, Sensor) and a RealEstateCore-style
//! building (Space, Building, Floor, Room, Equipment, AirHandlingUnit,
//! Filter, Sensor). Upload them with `POST /api/v1/models`.

pub const PROCESS_PLANT: &str = include_str!("../../../ontologies/process-plant.json");
pub const BUILDING: &str = include_str!("../../../ontologies/building.json");

#[cfg(test)]
mod tests {
    use twinhub_model::dtdl::{parse_models, ModelSet};

    #[test]
    fn the_shipped_ontologies_load_together() {
        let mut all = parse_models(super::PROCESS_PLANT.as_bytes()).unwrap();
        all.extend(parse_models(super::BUILDING.as_bytes()).unwrap());
        let set = ModelSet::default().with(all).unwrap();
        let reactor = twinhub_model::dtdl::Dtmi::parse("dtmi:twinhub:plant:Reactor;1").unwrap();
        let asset = twinhub_model::dtdl::Dtmi::parse("dtmi:twinhub:plant:Asset;1").unwrap();
        assert!(set.is_a(&reactor, &asset));
        assert!(set.telemetry_schema(&reactor, "agitator.speed").is_some());
    }
}
